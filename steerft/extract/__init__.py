"""Steering vectors from contrast pairs: CAA mean difference, PCA, a logistic probe and CCS.

The pieces (`pair_activations`, `fit_directions`, `save_adapter`) are public for use in notebooks,
in the study runner and in the extract job (`steerft.jobs.extract`).
"""

from .activations import REDUCTIONS, read_activations, read_rows, site_readers
from .estimators import ESTIMATORS, Direction, estimate, fit_logistic
from .pipeline import Extraction, PairActivations, fit_directions, pair_activations, save_adapter, save_vectors, truth_directions
from .report import LayerReport, write_report

__all__ = [
    "ESTIMATORS",
    "REDUCTIONS",
    "Direction",
    "Extraction",
    "LayerReport",
    "PairActivations",
    "estimate",
    "fit_directions",
    "fit_logistic",
    "pair_activations",
    "read_activations",
    "read_rows",
    "save_adapter",
    "save_vectors",
    "site_readers",
    "truth_directions",
    "write_report",
]
