"""Modules: quantized conv/linear layers, Fixup scalars and their fused tails, quantized BN, and
``prepare`` (binds a spec to a model). Imports ``eoq.quant`` and ``eoq.engine``.

    layers       GridParam (integer-stored weights), QConv2d, QLinear, FixupScalar, the fused bias/ReLU Fns
    fixup_tail   the fused multiplier + bias + residual add + ReLU of a Fixup block
    batchnorm    QBatchNorm2d (WAGEUBN's quantized BN)
    prepare      prepare(model, spec): binds the spec, exponents and engine to every layer
"""
