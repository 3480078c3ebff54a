"""Run exported bundles with onnxruntime. Torch-free: this is what runs on the device."""

from edgekit.runtime.bundle import Bundle

__all__ = ["Bundle"]
