"""Quantization-error statistics: a collector attached to training, and its figures.

    stats        QStatsCollector: SQNR, zero and saturation fractions, exponents per layer and kind
    figures      python -m analysis.qstats_figures: curves, heatmap and histograms
"""
