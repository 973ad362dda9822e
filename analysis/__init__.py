"""Analysis tools on top of ``eoq``: block dynamical isometry, quantization-error statistics, the
cost model, run comparisons and reports. The public API, for notebooks:

    from analysis import measure_blocks, end_to_end, QStatsCollector, count_config, ratios

Subpackages: ``isometry`` (Jacobian estimators, per-block phi, the theorems, the sweep),
``cost`` (op counts, energy and cycle tables, ``eoq cost``), ``qstats`` (collector and figures);
modules ``runs`` (tables and curves of run directories), ``report`` (``eoq report``),
``batch_study`` (small-batch online training) and ``style`` (figure style). ``analysis`` imports
``eoq``; of ``eoq`` only the command line imports ``analysis``.
"""
from .cost.report import count_config, ratios, totals_table
from .cost.tables import load_tables
from .isometry.blocks import end_to_end, measure_blocks, quantization_off, quantized_backward_gains, serial_product
from .isometry.jacobian import JacobianError, PhiEstimate, estimate
from .isometry.theorems import all_checks as theorem_checks
from .isometry.theorems import table as theorem_table
from .qstats.figures import plot_curves as plot_qstats_curves
from .qstats.figures import plot_heatmap, plot_histograms, summary_table
from .qstats.stats import QStatsCollector, read_qstats
from .report import build_report
from .runs import accuracy_table, load_run, seed_table

__all__ = [
    # isometry (SPEC section 4)
    "estimate", "PhiEstimate", "JacobianError", "measure_blocks", "end_to_end", "serial_product",
    "quantized_backward_gains", "quantization_off", "theorem_checks", "theorem_table",
    # quantization-error statistics
    "QStatsCollector", "read_qstats", "summary_table", "plot_heatmap", "plot_histograms", "plot_qstats_curves",
    # cost model (SPEC section 5)
    "count_config", "ratios", "totals_table", "load_tables",
    # runs and reports
    "load_run", "accuracy_table", "seed_table", "build_report",
]
