"""Training: data, batches, schedules, the EOQ optimizer, the configuration and the loop.

Imports ``eoq.models``, ``eoq.nn``, ``eoq.quant`` and the leaves; only ``eoq.cli`` sits above.

    data         CIFAR-10 from its usual forms, decoded once and cached; the validation split
    batches      batch order, random crop and flip, normalisation (resumable to the step)
    schedule     learning-rate and momentum schedules
    optimizer    EOQSGD: integer weight updates without a float master copy
    config       TrainConfig and the default schedule per preset and norm
    setup        model + spec + optimizer + generator in one call
    checkpoint   atomic checkpoints, loaded with weights_only=True
    metrics      metrics.csv
    loop         train(): resume, signals, observers, checkpoints, metrics
    atomic       write-then-rename files (no half-written file after a fault)
"""
