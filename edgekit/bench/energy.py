"""Energy per inference from the meter a device has (standard library only: runs on the device).

- ``rapl``: Intel/AMD RAPL package counters under /sys/class/powercap (x86 Linux; root-only since 5.10).
- ``nvml``: the GPU's total-energy counter through NVML (``pynvml``; Volta and newer, the T4 included).
- ``pmic``: the Raspberry Pi 5's PMIC rails (``vcgencmd pmic_read_adc``: current and voltage per rail),
  sampled and integrated.

Idle power is measured first, for as long as the active phase, and subtracted: what is left is the
energy the inferences cost. ``EDGEKIT_POWERCAP_ROOT`` points the RAPL reader at another tree (tests
use recorded counters there).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

METERS = ("rapl", "nvml", "pmic")


class Unavailable(Exception):
    """This meter cannot be read here; the message says why."""


class Rapl:
    name = "rapl"

    def __init__(self, root: str | None = None):
        base = Path(root or os.environ.get("EDGEKIT_POWERCAP_ROOT") or "/sys/class/powercap")
        zones = sorted(p for p in base.glob("intel-rapl:*") if p.name.count(":") == 1) if base.is_dir() else []
        if not zones:
            raise Unavailable(f"no RAPL package domain under {base}")
        self.domains = []
        for zone in zones:
            try:
                name = (zone / "name").read_text().strip()
                raw = int((zone / "energy_uj").read_text())
                wrap = int((zone / "max_energy_range_uj").read_text()) if (zone / "max_energy_range_uj").exists() else 0
            except PermissionError:
                raise Unavailable(
                    f"{zone / 'energy_uj'} is not readable (permission denied: RAPL counters are root-only on "
                    "Linux 5.10 and later; run the bench as root or grant read access)"
                ) from None
            except (OSError, ValueError) as exc:
                raise Unavailable(f"{zone / 'energy_uj'} cannot be read: {exc}") from None
            if name.startswith("package") or name == "psys":
                self.domains.append({"path": zone / "energy_uj", "name": name, "wrap": wrap, "last": raw, "total": 0})
        if not self.domains:
            raise Unavailable(f"no RAPL package domain under {base}")
        self.description = f"RAPL ({', '.join(d['name'] for d in self.domains)})"

    def joules(self) -> float:
        for domain in self.domains:
            raw = int(domain["path"].read_text())
            step = raw - domain["last"]
            if step < 0:  # the counter wrapped at max_energy_range_uj
                step += domain["wrap"]
            domain["total"] += step
            domain["last"] = raw
        return sum(d["total"] for d in self.domains) / 1e6

    def close(self) -> None:
        pass


class Nvml:
    name = "nvml"

    def __init__(self):
        try:
            import pynvml
        except ImportError:
            raise Unavailable("NVML is not installed (pip install nvidia-ml-py)") from None
        try:
            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            if not self.handles:
                raise Unavailable("NVML sees no GPU")
            self.joules()
            names = [pynvml.nvmlDeviceGetName(h) for h in self.handles]
        except pynvml.NVMLError as exc:
            raise Unavailable(f"NVML cannot read the GPU's energy counter: {exc}") from None
        self.nvml = pynvml
        self.description = f"NVML total energy ({', '.join(n.decode() if isinstance(n, bytes) else n for n in names)})"

    def joules(self) -> float:
        import pynvml

        return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles) / 1e3  # mJ

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - closing a meter never fails a benchmark
            pass


_RAIL = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([-+0-9.eE]+)[AV]\s*$")


def pmic_watts(text: str) -> float:
    """Total power (W) of ``vcgencmd pmic_read_adc`` output: current x voltage summed over rails."""
    amps, volts = {}, {}
    for line in text.splitlines():
        match = _RAIL.match(line)
        if match:
            (amps if match.group(2) == "A" else volts)[match.group(1)] = float(match.group(3))
    rails = set(amps) & set(volts)
    if not rails:
        raise Unavailable("vcgencmd pmic_read_adc printed no rail with both a current and a voltage")
    return sum(amps[r] * volts[r] for r in rails)


class Pmic:
    name = "pmic"

    def __init__(self, interval: float = 0.1):
        self.command = shutil.which("vcgencmd")
        if not self.command:
            raise Unavailable("vcgencmd is not on PATH (the PMIC meter is the Raspberry Pi 5's)")
        self.lock = threading.Lock()
        self.total = 0.0
        self.last = (time.perf_counter(), self._watts())
        self.description = "Raspberry Pi 5 PMIC (vcgencmd pmic_read_adc, sampled)"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample_every, args=(interval,), daemon=True)
        self.thread.start()

    def _watts(self) -> float:
        try:
            proc = subprocess.run([self.command, "pmic_read_adc"], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"vcgencmd pmic_read_adc failed: {exc}") from None
        if proc.returncode != 0:
            raise Unavailable(
                f"vcgencmd pmic_read_adc failed ({(proc.stderr.strip().splitlines() or ['no message'])[-1]}); "
                "only the Raspberry Pi 5 has this meter"
            )
        return pmic_watts(proc.stdout)

    def _sample(self) -> None:
        watts = self._watts()
        now = time.perf_counter()
        with self.lock:
            then, before = self.last
            self.total += (now - then) * (watts + before) / 2  # trapezoid
            self.last = (now, watts)

    def _sample_every(self, interval: float) -> None:
        while not self.stop.wait(interval):
            try:
                self._sample()
            except Unavailable:
                return

    def joules(self) -> float:
        self._sample()
        with self.lock:
            return self.total

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


_KINDS = {"rapl": Rapl, "nvml": Nvml, "pmic": Pmic}


def open_meter(kinds: Sequence[str] = METERS) -> tuple[Any, str | None]:
    """The first of ``kinds`` that can be read here, or (None, why none could)."""
    if not kinds:
        return None, "the device profile lists no energy meter (energy_meters: [])"
    reasons = []
    for kind in kinds:
        try:
            return _KINDS[kind](), None
        except Unavailable as exc:
            reasons.append(f"{kind}: {exc}")
    return None, "no energy meter readable here (" + "; ".join(reasons) + ")"


def measure(
    step: Callable[[], Any],
    kinds: Sequence[str] = METERS,
    seconds: float = 2.0,
    *,
    meter: Any = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Energy per inference of ``step`` (mJ): idle power over ``seconds``, then ``step`` in a loop for
    ``seconds``, the idle energy of that time subtracted. ``energy_mj_per_inference`` is None, with the
    reason, where no meter is readable."""
    if seconds <= 0:
        return {"energy_mj_per_inference": None, "meter": None, "reason": "energy measurement off (energy_seconds 0)"}
    reason = None
    if meter is None:
        meter, reason = open_meter(kinds)
    if meter is None:
        return {"energy_mj_per_inference": None, "meter": None, "reason": reason}
    try:
        j0, t0 = meter.joules(), clock()
        sleep(seconds)
        j1, t1 = meter.joules(), clock()
        count = 0
        while clock() - t1 < seconds or count == 0:
            step()
            count += 1
        j2, t2 = meter.joules(), clock()
    except Unavailable as exc:
        return {"energy_mj_per_inference": None, "meter": meter.description, "reason": str(exc)}
    finally:
        meter.close()
    idle_w = (j1 - j0) / (t1 - t0)
    active_w = (j2 - j1) / (t2 - t1)
    return {
        "energy_mj_per_inference": ((j2 - j1) - idle_w * (t2 - t1)) / count * 1e3,
        "gross_energy_mj_per_inference": (j2 - j1) / count * 1e3,
        "idle_watts": idle_w,
        "active_watts": active_w,
        "inferences": count,
        "seconds": t2 - t1,
        "meter": meter.description,
        "reason": None,
    }
