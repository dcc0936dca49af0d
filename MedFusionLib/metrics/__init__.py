"""Fusion-quality metrics: one plain function per metric, NumPy in, float out.

Every function maps its images onto a common 0-255 scale first (colour images are
scored on BT.601 luminance); see :mod:`MedFusionLib.metrics._common` for the rule and
each function's docstring for its formula, reference and conventions.

- the fused image alone: :func:`entropy` (EN), :func:`mean_intensity` (MEAN),
  :func:`standard_deviation` (STD), :func:`spatial_frequency` (SF),
  :func:`average_gradient` (GRAD), :func:`energy_of_gradient` (EOG);
- against the sources: :func:`fusion_mutual_information` (MI),
  :func:`feature_mutual_information` (FMI), :func:`universal_quality_index` (Q0),
  :func:`weighted_quality_index` (QW), :func:`edge_dependent_quality_index` (QE),
  :func:`gradient_based_quality_index` (Q^AB/F; Liu's form:
  :func:`gradient_based_quality_index_liu`), :func:`ssim_to_sources`,
  :func:`visual_information_fidelity` (VIF);
- against a target image: :func:`root_mean_squared_error` (RMSE),
  :func:`peak_signal_to_noise_ratio` (PSNR), :func:`structural_similarity` (SSIM),
  :func:`relative_error` (REL), :func:`cross_entropy` (CE), :func:`conditional_entropy` (H).

:func:`evaluate` computes a chosen set at once, sharing intermediate results between
metrics; :func:`evaluate_volume` scores a fused volume slice by slice; :func:`metrics_table` turns results into the tidy table the CLI, the
experiments and the Slicer module share.

The windowed and filtered metrics (FMI, Q0, QW, QE, Q^AB/F, SSIM, VIF, the histograms)
run as compiled kernels when numba is installed (the ``fast`` extra), on as many
threads as numba may use, and on NumPy/SciPy otherwise; both give the same values up to
rounding (:func:`metrics_backend` tells which is in use, ``evaluate(..., backend=...)`` picks).
"""

from ._common import SCORE_MAX, to_score_scale
from ._group import ScoredGroup, metrics_backend
from .evaluate import (
    HIGHER,
    LOWER,
    METRICS,
    NEUTRAL,
    MetricInfo,
    default_metrics,
    evaluate,
    format_table,
    metric_names,
    metrics_table,
    table_to_csv,
)
from .fmi import feature_mutual_information, fmi_backend
from .grid import block_grid_index
from .information import (
    conditional_entropy,
    cross_entropy,
    entropy,
    fusion_mutual_information,
    mutual_information,
)
from .reference import (
    peak_signal_to_noise_ratio,
    relative_error,
    root_mean_squared_error,
    structural_similarity,
)
from .statistics import (
    average_gradient,
    energy_of_gradient,
    mean_intensity,
    spatial_frequency,
    standard_deviation,
)
from .piella import edge_dependent_quality_index, weighted_quality_index
from .qabf import gradient_based_quality_index, gradient_based_quality_index_liu
from .structural import ssim_to_sources, universal_quality_index, visual_information_fidelity
from .volume import VolumeScores, evaluate_volume

__all__ = [
    "block_grid_index",
    "HIGHER", "LOWER", "METRICS", "NEUTRAL", "MetricInfo", "SCORE_MAX", "ScoredGroup", "VolumeScores",
    "average_gradient", "conditional_entropy", "cross_entropy", "default_metrics", "edge_dependent_quality_index",
    "energy_of_gradient", "entropy", "evaluate", "evaluate_volume", "feature_mutual_information", "fmi_backend", "format_table",
    "fusion_mutual_information", "gradient_based_quality_index", "gradient_based_quality_index_liu", "mean_intensity", "metric_names", "metrics_backend",
    "metrics_table", "mutual_information", "peak_signal_to_noise_ratio", "relative_error",
    "root_mean_squared_error", "spatial_frequency", "ssim_to_sources", "standard_deviation",
    "structural_similarity", "table_to_csv", "to_score_scale", "universal_quality_index",
    "visual_information_fidelity", "weighted_quality_index",
]
