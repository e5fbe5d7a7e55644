"""Evaluation: the built-in feature network and torch-fidelity metrics.

Importing this package registers the built-in feature extractor with torch-fidelity as
``sdtgen-animals``, so ``torch_fidelity.calculate_metrics(..., feature_extractor=
"sdtgen-animals")`` works after ``import sdtgen.evaluation``.
"""

from sdtgen.evaluation.feature_net import EXTRACTOR_NAME, AnimalsFeatureNet, load_feature_net, register
from sdtgen.evaluation.metrics import compute_metrics, fid_against_npz

register()

__all__ = ["EXTRACTOR_NAME", "AnimalsFeatureNet", "compute_metrics", "fid_against_npz", "load_feature_net"]
