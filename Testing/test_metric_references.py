"""MedFusion's metrics against numbers computed by the public MATLAB reference code.

``Testing/reference_metrics/fixtures.json`` holds the values VIFB's ``metrics*.m``
(xingchenzhang/VIFB), Zheng Liu's ``metricXydeas.m`` / ``metricPeilla.m``
(zhengliu6699/imageFusionMetrics), Haghighat's ``fmi.m`` (mhaghighat/fmi) and Tang's
evaluation code (Linfeng-Tang/Image-Fusion) gave under GNU Octave on six small uint8 cases
(``generate_fixtures.py`` there makes them again; these tests need no Octave). Every metric
named here must agree to 1e-9 relative on both backends; the bar the project sets is 1e-6.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from MedFusionLib import metrics as m
from MedFusionLib.metrics import metrics_backend

FIXTURES = json.loads((Path(__file__).parent / "reference_metrics" / "fixtures.json").read_text(encoding="utf-8"))
CASES = FIXTURES["cases"]

#: Reference function (as named in the fixtures) -> MedFusion's metric, called (A, B, F) as the reference is.
REPRODUCED = {
    "VIFB/metricsQabf": ("QABF", lambda a, b, f, **k: m.gradient_based_quality_index(f, [a, b], **k)),
    "VIFB/metricsAvg_gradient": ("GRAD", lambda a, b, f, **k: m.average_gradient(f)),
    "VIFB/metricsSpatial_frequency": ("SF", lambda a, b, f, **k: m.spatial_frequency(f)),
    "VIFB/metricsEntropy": ("EN", lambda a, b, f, **k: m.entropy(f)),
    "VIFB/metricsVariance": ("STD", lambda a, b, f, **k: m.standard_deviation(f)),  # VIFB's "variance" is the SD
    "VIFB/metricsMutinf": ("MI", lambda a, b, f, **k: m.fusion_mutual_information(f, [a, b])),
    "VIFB/metricsSsim": ("SSIM_S", lambda a, b, f, **k: m.ssim_to_sources(f, [a, b])),
    "Liu/metricXydeas": ("QABF_LIU", lambda a, b, f, **k: m.gradient_based_quality_index_liu(f, [a, b])),
    "Liu/metricPeilla_sw2": ("QW", lambda a, b, f, **k: m.weighted_quality_index(f, [a, b])),
    "Liu/metricPeilla_sw3_patched": ("QE", lambda a, b, f, **k: m.edge_dependent_quality_index(f, [a, b])),
    "Haghighat/fmi_gradient_w3": ("FMI", lambda a, b, f, **k: m.feature_mutual_information(f, [a, b])),
    "Sheikh/vifp_mscale_double": ("VIF", lambda a, b, f, **k: m.visual_information_fidelity(f, [a, b])),
    "Tang/EN": ("EN", lambda a, b, f, **k: m.entropy(f)),
    "Tang/AG": ("GRAD", lambda a, b, f, **k: m.average_gradient(f)),
}
#: Reproduced by a metric's option rather than its default (no registry key: checked by calling the function).
REPRODUCED_OPTIONS = {
    "Haghighat/fmi_none_w3": lambda a, b, f: m.feature_mutual_information(f, [a, b], feature="pixel"),
}
#: Reference functions with no MedFusion counterpart, and why (said in the README's metric table too).
NOT_REPRODUCED = {
    "VIFB/metricsPsnr": "VIFB's PSNR compares F with the sources (sqrt(SSE)/N, not the MSE); MedFusion's PSNR "
                        "compares F with a target image, as the papers' PSNR does",
    "VIFB/metricsRmse": "the same: MedFusion's RMSE is against a target image",
    "VIFB/metricsCross_entropy": "VIFB's CE is between F and the sources; MedFusion's CE is against a target",
    "VIFB/metricsEdge_intensity": "edge intensity is not among the papers' metrics",
    "Liu/metricPeilla_sw1": "Piella's unweighted Q; MedFusion's Q0 is Wang & Bovik's index (8x8 windows)",
    # Tang's Image-Fusion evaluation code: the same names, other definitions (see the README's metric table).
    "Tang/SF": "images on [0, 1], each sum divided by its own number of differences (VIFB: M x N on 0-255)",
    "Tang/SD": "computed on uint8, so F - mean is clipped at 0 and the squares at 255",
    "Tang/MI": "Hab.m adds 1 in uint8, so grey levels 254 and 255 share a bin (VIFB's MI is reproduced)",
    "Tang/VIF": "vifp_mscale.m is given uint8 images, so the squares and products saturate at 255 "
                "(on double images it matches MedFusion's VIF to 4e-13)",
    "Tang/Qabf": "on [0, 1] images, where its G = g_F rule for equal strengths gives a small G; VIFB scales by 255",
    "Tang/SSIM": "Ma et al.'s MEF-SSIM, not the sum of SSIM to each source",
    "Tang/MS_SSIM": "multi-scale MEF-SSIM; not among the papers' metrics",
    "Tang/FMI_pixel": "FMI of binary edge maps (its default feature is 'edge'); MedFusion's FMI is Haghighat's gradient FMI",
    "Tang/PSNR": "two-source PSNR with the error on [0, 1] and the peak 255; MedFusion's PSNR is against a target",
    "Tang/MSE": "two-source MSE on [0, 1]; MedFusion's RMSE is against a target",
    "Tang/CC": "correlation coefficient: not among the papers' metrics",
    "Tang/SCD": "sum of the correlations of differences: not among the papers' metrics",
    "Tang/Nabf": "Kumar's artefact measure N^AB/F: not among the papers' metrics",
}


def _images(case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.array(case[name], dtype=np.uint8) for name in ("A", "B", "F"))


def test_every_reference_value_is_reproduced_or_said_why_not():
    recorded = {key for case in CASES for key in case["values"]}
    named = set(REPRODUCED) | set(REPRODUCED_OPTIONS) | set(NOT_REPRODUCED)
    assert recorded == named, recorded ^ named
    assert {key for key, _ in REPRODUCED.values()} <= set(m.METRICS)


@pytest.mark.parametrize("reference", sorted(REPRODUCED))
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_metric_reproduces_the_reference_code(case, reference):
    key, function = REPRODUCED[reference]
    a, b, f = _images(case)
    expected = case["values"][reference]
    assert function(a, b, f) == pytest.approx(expected, rel=1e-9, abs=1e-12), (key, reference)
    for backend in {"numpy", metrics_backend()}:  # evaluate() on each backend gives the same number
        value = m.evaluate(f, [a, b], metrics=[key], backend=backend)[key]
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-12), (key, reference, backend)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_one_evaluation_of_every_metric_reproduces_the_reference_code(case):
    """Asked together, metrics share passes (SSIM and QW their Gaussian moments): still the reference's numbers."""
    a, b, f = _images(case)
    keys = sorted({key for key, _ in REPRODUCED.values()})
    for backend in {"numpy", metrics_backend()}:
        values = m.evaluate(f, [a, b], metrics=keys, backend=backend)
        for reference, (key, _) in REPRODUCED.items():
            assert values[key] == pytest.approx(case["values"][reference], rel=1e-9, abs=1e-12), (key, backend)


@pytest.mark.parametrize("reference", sorted(REPRODUCED_OPTIONS))
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_metric_option_reproduces_the_reference_code(case, reference):
    a, b, f = _images(case)
    assert REPRODUCED_OPTIONS[reference](a, b, f) == pytest.approx(case["values"][reference], rel=1e-9, abs=1e-12)


def test_fixture_images_exercise_the_quirks():
    """The cases hold what the reference rules are about: equal and zero edge strengths (Q^AB/F), flat grey
    and black windows (QW/QE), a non-square image and F equal to a source."""
    shapes = {tuple(c["shape"]) for c in CASES}
    assert any(h != w for h, w in shapes)
    assert any(np.array_equal(*_images(c)[::2]) for c in CASES)  # F = A
    flat = [c for c in CASES if c["name"] == "flat_partial_copy"][0]
    a, b, f = _images(flat)
    assert (a == a[0, 0]).mean() > 0.2 and np.any(f == a)


def test_fixtures_say_where_they_came_from():
    sources = FIXTURES["sources"]
    files = {(s["repo"], s["path"]) for s in sources["files"]}
    assert ("xingchenzhang/VIFB", "metrics/metricsQabf.m") in files
    assert ("zhengliu6699/imageFusionMetrics", "metricPeilla.m") in files
    assert all(len(s["sha256"]) == 64 and len(s["commit"]) == 40 for s in sources["files"])
    assert sources["octave_version"] and "Q = metricPeilla" in json.dumps(sources)
    for case in CASES:
        for value in case["values"].values():
            assert math.isfinite(value)
