"""ExecuTorch's runtime behind onnxruntime's ``run(outputs, feeds)`` interface, for ``.pte`` bundles.

What a device needs: ``pip install executorch`` (1.5.1 was checked; wheels for x86-64 and aarch64
Linux). Its Python runtime links libtorch, so the process loads torch too (the bench's peak RSS says
so); ONNX bundles stay the torch-free default. XNNPACK runs the delegated parts; int8 embeddings run
on ExecuTorch's quantized kernels, loaded here from the same wheel.

A program is memory-planned for the largest shapes it was exported with (``max_batch`` in the
manifest's preprocessing, sequence up to the tokenizer's max_length): a larger batch is run
in slices of at most that size.
"""

from __future__ import annotations

import ctypes
import importlib.util
import warnings
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

INSTALL = "pip install executorch==1.5.1"
_KERNELS_LOADED = False


def runtime_version() -> str | None:
    """The installed ExecuTorch's version, or None (nothing imported)."""
    if importlib.util.find_spec("executorch") is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("executorch")
    except PackageNotFoundError:
        return "unknown"


def _load_quantized_kernels(package: Path) -> None:
    """ExecuTorch's quantized kernels (int8 embeddings) register themselves when their library loads."""
    global _KERNELS_LOADED
    if _KERNELS_LOADED:
        return
    for library in (package / "lib").glob("libexecutorch_kernels_quantized.*"):
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    _KERNELS_LOADED = True


def _runtime():
    """ExecuTorch's C++ runtime bindings with its quantized kernels registered. The bindings module
    itself (``_C``) is loaded, not ``executorch.runtime``, whose import pulls in the whole exporter
    (about 11 s here, against 3 s for torch and the bindings)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import executorch
            import torch  # the bindings take and return torch tensors
            from executorch.extension.pybindings import _C
    except ImportError as exc:
        raise EdgekitError(
            f"ExecuTorch's runtime cannot start here ({exc}); {INSTALL} (it needs torch beside it), "
            "or run an ONNX bundle on this device"
        ) from None

    _load_quantized_kernels(Path(executorch.__path__[0]))
    return torch, _C


class ExecuTorchSession:
    """One ``.pte`` program's ``forward`` method."""

    def __init__(self, path: Path, input_names: list[str], threads: int = 0, max_batch: int | None = None):
        path = Path(path)
        if runtime_version() is None:
            raise EdgekitError(
                f"this bundle is ExecuTorch (.pte) and needs its runtime: {INSTALL} "
                "(it brings torch; or export with --format onnx for a torch-free device)"
            )
        if not path.is_file():
            raise EdgekitError(f"model file {path} is missing; export the bundle again")
        self._torch, runtime = _runtime()
        if threads:
            runtime._unsafe_reset_threadpool(int(threads))
        self.input_names = list(input_names)
        self.max_batch = int(max_batch) if max_batch else None
        try:
            self.method = runtime._load_program(str(path)).load_method("forward")
        except Exception as exc:  # the runtime raises RuntimeError/ValueError for a corrupt or foreign file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgekitError(
                f"ExecuTorch cannot load {path}: {first[:300]}; the file may be corrupt or truncated, "
                "or made by another ExecuTorch version: export it again"
            ) from None
        if self.method is None:
            raise EdgekitError(f"ExecuTorch cannot load {path}: it has no forward method; export it again")
        self.threads = runtime._threadpool_get_thread_count()

    @classmethod
    def open(cls, path: Path, input_names: list[str], threads: int, manifest) -> ExecuTorchSession:
        return cls(path, input_names, threads, manifest.preprocessing.get("max_batch"))

    def _execute(self, tensors: list) -> np.ndarray:
        try:
            out = self.method(tensors)[0]
        except Exception as exc:  # noqa: BLE001 - a kernel or shape error inside the runtime
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(self.input_names, tensors))
            raise EdgekitError(f"ExecuTorch could not run the program on {shapes}: {first[:300]}") from None
        return out.float().numpy()

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        arrays = [np.ascontiguousarray(feeds[n]) for n in self.input_names]
        batch = len(arrays[0])
        step = self.max_batch or batch or 1
        parts = []
        for start in range(0, max(batch, 1), step):
            parts.append(self._execute([torch.from_numpy(a[start : start + step]) for a in arrays]))
        return [np.concatenate(parts) if len(parts) > 1 else parts[0]]

    def get_providers(self) -> list[str]:
        return [f"ExecuTorch {runtime_version()} (XNNPACK, {self.threads} threads; loads torch)"]
