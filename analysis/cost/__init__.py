"""Cost model (SPEC section 5): op counts per layer, phase and number format; energy and latency.

    counter      counts a training step's ops with a dispatch mode (tagged by format)
    tables       the per-op energy and cycle tables, overridable from JSON
    report       eoq cost: fp32+BN against EOQ+Fixup, markdown and figures
"""
