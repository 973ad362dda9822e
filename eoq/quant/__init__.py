"""Numerics: the quantizers, their random bits, and the spec that says which tensor gets which.

No ``nn.Module`` lives here. Imports only the leaves ``eoq.kernels`` (the compiled kernels) and
``eoq.distributed`` (process groups, for the sharded SQ of data-parallel training).

    rng          counter-hash random bits and keys (stochastic rounding, bit-exact everywhere)
    quantizers   Q, C, R, SQ, FQ, CQ (SPEC section 1), float and integer forms
    spec         TensorQuant, LayerQuant, WeightPolicy, QuantSpec: plain data, JSON round-trip
    presets      the named specs (fp32, eoq, eoq-float-ends, eoq-shift, wageubn)
    apply        apply_quant: a TensorQuant applied to a tensor, observers told
    observe      the observer hook (quantization statistics)
    fusion       the tensor side channel between fused kernels, in one documented place
"""
