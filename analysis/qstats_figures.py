"""Entry point kept for the commands recorded in reports/: ``python -m analysis.qstats_figures``
runs :mod:`analysis.qstats.figures`."""
from analysis.qstats.figures import main

if __name__ == "__main__":
    main()
