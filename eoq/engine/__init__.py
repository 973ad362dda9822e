"""The integer engine: int8 x int8 -> int32 convolutions and GEMMs on the codes (``--engine int``).

Imports ``eoq.quant``, ``eoq.kernels`` and ``eoq.distributed``; nothing of ``nn`` or above.

    intengine    the forward and backward of a quantized conv/linear on int8 codes
    direct       direct VNNI/AMX int8 convolutions (no im2col) for stride-1 layers of 16-64 channels
    int_gemm     the int8 GEMM: torch._int_mm, or exact float32 chunks on CPUs without int8 dot products
    float_conv   there, the convolutions' integer sums as exact float32 convolutions (oneDNN)
    allocator    keeps freed activation-sized blocks in the process (no page faults on reuse)
"""
from ..quant.formats import Choice


class Engine(Choice):
    """Which arithmetic computes the quantized layers."""

    SIM = "sim"   # float32 simulation of the integer arithmetic (exact: codes times powers of two)
    INT = "int"   # int8 x int8 -> int32 on the codes (eoq.engine.intengine), bit-exact with SIM
