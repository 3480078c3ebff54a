"""A guard for bitsandbytes' CPU NF4 kernels.

bitsandbytes 0.50's native CPU ``dequantize_4bit`` (the AVX-512 build) walks the weight row by row
and gets the blocks wrong when a row's width is not a multiple of the block size (a 48-wide layer:
40% relative error instead of NF4's ~9%; the codes themselves are right). Training through
``Linear4bit`` and edgekit's exact merge both dequantize, so edgekit checks the kernel once per
process on a small tensor against bitsandbytes' own pure-PyTorch implementation and, where they
differ, registers that implementation for the CPU. Where the native kernel is right nothing changes.
"""

from __future__ import annotations

import torch

_checked = False


def fix_bitsandbytes_cpu_dequantize() -> bool:
    """True when the native kernel was wrong here and has been replaced."""
    global _checked
    if _checked:
        return False
    _checked = True
    import bitsandbytes.functional as F

    try:
        from bitsandbytes._ops import register_kernel
        from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
        from bitsandbytes.backends.utils import _get_4bit_code
    except ImportError:  # another bitsandbytes layout: nothing to check against
        return False

    def generic(A, absmax, blocksize, quant_type, shape, dtype):
        if A.dtype != torch.uint8:
            A = A.view(torch.uint8)
        return _dequantize_4bit_compute(
            A.reshape(-1), absmax, _get_4bit_code(quant_type, A.device), blocksize, shape, dtype
        )

    probe = torch.randn(16, 48, generator=torch.Generator().manual_seed(0))  # rows not a multiple of the block
    packed, state = F.quantize_4bit(probe, quant_type="nf4", blocksize=64)
    native = F.dequantize_4bit(packed, state)
    reference = generic(packed, state.absmax, state.blocksize, "nf4", state.shape, state.dtype)
    if torch.allclose(native, reference):
        return False
    register_kernel("bitsandbytes::dequantize_4bit", "cpu")(generic)
    return True
