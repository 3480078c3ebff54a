"""Benchmarks: latency, size and memory of exported bundles on a device profile. Torch-free."""
