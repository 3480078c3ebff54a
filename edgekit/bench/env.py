"""What the numbers were measured on: CPU, governor, frequency, temperature, throttling, versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            if line.lower().startswith(key.lower()) and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# The instructions that decide which int8 kernels run: x86 AVX2/AVX-512/VNNI/AMX, ARM dot products.
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")
HWCAP_NAMES = {1 << 1: "asimd", 1 << 20: "asimddp", 1 << 22: "sve"}  # Linux arm64 AT_HWCAP bits


def isa_flags() -> list[str]:
    """This CPU's int8-relevant instruction-set flags. On aarch64 from the kernel's AT_HWCAP (what
    onnxruntime itself reads; under QEMU the emulated core's), elsewhere from /proc/cpuinfo."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            libc.getauxval.restype = ctypes.c_ulong
            hwcap = int(libc.getauxval(16))  # AT_HWCAP
            return sorted(name for bit, name in HWCAP_NAMES.items() if hwcap & bit)
        except (OSError, AttributeError):
            pass
    words = set()
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("flags", "features")) and ":" in line:
            words.update(line.split(":", 1)[1].split())
    return sorted(f for f in INT8_FLAGS if f in words)


def here() -> dict[str, Any]:
    """Where a number is measured: machine, CPU model, int8-relevant ISA flags, onnxruntime."""
    import onnxruntime

    from edgekit import __version__

    return {
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "isa_flags": isa_flags(),
        "onnxruntime": onnxruntime.__version__,
        "edgekit": __version__,
        "python": platform.python_version(),
    }


def temperatures_c(sensors: list[str] | tuple[str, ...] = ()) -> dict[str, float]:
    """Every thermal zone, plus the profile's own sensor files (millidegrees Celsius, as in sysfs)."""
    temps = {}
    for sensor in sensors:
        raw = _read(sensor)
        if raw and raw.lstrip("-").isdigit():
            temps[sensor] = int(raw) / 1000.0
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        raw, kind = _read(str(zone / "temp")), _read(str(zone / "type"))
        if raw and raw.lstrip("-").isdigit():
            temps[f"{zone.name}:{kind or 'unknown'}"] = int(raw) / 1000.0
    return temps


def throttling() -> dict[str, Any] | None:
    """Raspberry Pi firmware's throttle flags, when vcgencmd is present."""
    if not shutil.which("vcgencmd"):
        return None
    try:
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = int(out.split("=")[-1], 16) if "=" in out else None
    return {
        "raw": out,
        "throttled_now": bool(value & 0x4) if value is not None else None,
        "under_voltage_now": bool(value & 0x1) if value is not None else None,
        "throttled_since_boot": bool(value & 0x40000) if value is not None else None,
    }


def capture(sensors: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    import onnxruntime

    from edgekit import __version__

    freq = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    return {
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "cores_logical": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cpu_freq_mhz": int(freq) / 1000 if freq and freq.isdigit() else None,
        "isa_flags": isa_flags(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "edgekit": __version__,
        "onnxruntime": onnxruntime.__version__,
        "temperatures_c": temperatures_c(sensors),
        "throttling": throttling(),
    }
