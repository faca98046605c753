"""Scanflow: keeps deployed image classifiers honest (train, predict, detect drift, improve)."""

from scanflow.config import apply_environment_defaults

apply_environment_defaults()

__version__ = "0.1.0"
