"""Entry point kept for the commands recorded in reports/: ``python -m analysis.isometry_experiment``
runs :mod:`analysis.isometry.experiment`."""
from analysis.isometry.experiment import main

if __name__ == "__main__":
    main()
