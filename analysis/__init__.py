"""Analysis tools on top of ``eoq``: block dynamical isometry, quantization-error statistics, the
cost model, run comparisons and reports. The public API, for notebooks:

    from analysis import measure_blocks, end_to_end, QStatsCollector, count_config, ratios

Subpackages: ``isometry`` (Jacobian estimators, per-block phi, the theorems, the sweep),
``cost`` (op counts, energy and cycle tables, ``eoq cost``), ``qstats`` (collector and figures);
modules ``runs`` (tables and curves of run directories), ``report`` (``eoq report``),
``batch_study`` (small-batch online training) and ``style`` (figure style). ``analysis`` imports
``eoq``; of ``eoq`` only the command line imports ``analysis``.

The names are imported on first use (PEP 562): ``python -m analysis.runs`` and its siblings then
run their module once, not a second time after the package has imported it.
"""
from __future__ import annotations

import importlib

_API = {   # name -> (module, attribute)
    # isometry (SPEC section 4)
    "estimate": (".isometry.jacobian", "estimate"), "PhiEstimate": (".isometry.jacobian", "PhiEstimate"),
    "JacobianError": (".isometry.jacobian", "JacobianError"),
    "measure_blocks": (".isometry.blocks", "measure_blocks"), "end_to_end": (".isometry.blocks", "end_to_end"),
    "serial_product": (".isometry.blocks", "serial_product"),
    "quantized_backward_gains": (".isometry.blocks", "quantized_backward_gains"),
    "quantization_off": (".isometry.blocks", "quantization_off"),
    "theorem_checks": (".isometry.theorems", "all_checks"), "theorem_table": (".isometry.theorems", "table"),
    # quantization-error statistics
    "QStatsCollector": (".qstats.stats", "QStatsCollector"), "read_qstats": (".qstats.stats", "read_qstats"),
    "summary_table": (".qstats.figures", "summary_table"), "plot_heatmap": (".qstats.figures", "plot_heatmap"),
    "plot_histograms": (".qstats.figures", "plot_histograms"),
    "plot_qstats_curves": (".qstats.figures", "plot_curves"),
    # cost model (SPEC section 5)
    "count_config": (".cost.report", "count_config"), "ratios": (".cost.report", "ratios"),
    "totals_table": (".cost.report", "totals_table"), "load_tables": (".cost.tables", "load_tables"),
    # runs and reports
    "load_run": (".runs", "load_run"), "accuracy_table": (".runs", "accuracy_table"),
    "seed_table": (".runs", "seed_table"), "build_report": (".report", "build_report"),
}
__all__ = list(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value                  # the next access is a plain lookup
    return value


def __dir__():
    return sorted([*globals(), *_API])

