"""An emulated aarch64 device: a Debian arm64 root with edgekit's core install, run under qemu-user.

``edgekit devices emulate rpi4`` builds it once (cached under ``$EDGEKIT_CACHE_DIR/emulate``);
``edgekit bench/eval --emulate`` and the parity check of an export for another instruction set run
there, on the profile's CPU model. Emulated latency is never a device's; labels and accuracy are exact.
"""
