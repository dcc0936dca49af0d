"""MedFusion's metrics against numbers computed by the public MATLAB reference code.

``Testing/reference_metrics/fixtures.json`` holds the values VIFB's ``metrics*.m``
(xingchenzhang/VIFB) and Zheng Liu's ``metricXydeas.m`` / ``metricPeilla.m``
(zhengliu6699/imageFusionMetrics) gave under GNU Octave on five small uint8 cases
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
}
#: Reference functions with no MedFusion counterpart, and why (said in the README's metric table too).
NOT_REPRODUCED = {
    "VIFB/metricsPsnr": "VIFB's PSNR compares F with the sources (sqrt(SSE)/N, not the MSE); MedFusion's PSNR "
                        "compares F with a target image, as the papers' PSNR does",
    "VIFB/metricsRmse": "the same: MedFusion's RMSE is against a target image",
    "VIFB/metricsCross_entropy": "VIFB's CE is between F and the sources; MedFusion's CE is against a target",
    "VIFB/metricsEdge_intensity": "edge intensity is not among the papers' metrics",
    "Liu/metricPeilla_sw1": "Piella's unweighted Q; MedFusion's Q0 is Wang & Bovik's index (8x8 windows)",
}


def _images(case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.array(case[name], dtype=np.uint8) for name in ("A", "B", "F"))


def test_every_reference_value_is_reproduced_or_said_why_not():
    recorded = {key for case in CASES for key in case["values"]}
    assert recorded == set(REPRODUCED) | set(NOT_REPRODUCED), recorded ^ (set(REPRODUCED) | set(NOT_REPRODUCED))
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
