"""Block dynamical isometry (SPEC section 4): Jacobian estimators, per-block measurements, the
theorems checked numerically, and the experiment that sweeps depth, norm and precision.

    jacobian     exact J, Hutchinson and SLQ estimates of phi(JJ^T) and its variance
    blocks       per-block and end-to-end measurements on a model
    theorems     serial / parallel composition and the quantization-noise term, checked
    experiment   python -m analysis.isometry_experiment: the sweep behind the reports
"""
