"""Regenerate ``fixtures.json``: fusion-metric values computed by published MATLAB reference code under GNU Octave.

Usage::

    python Testing/reference_metrics/generate_fixtures.py --sources /tmp/refsrc

``--sources`` is a folder holding the reference code at the commits in ``REFERENCE_FILES``: ``VIFB/metrics/*.m``,
``imageFusionMetrics/*.m``, ``Tang/*.m`` (the folder ``General Evaluation Metric/Evaluation/`` of
Linfeng-Tang/Image-Fusion) and ``fmi/fmi.m`` (mhaghighat/fmi); see README.md for the ``git clone`` commands.
Their code is only read from there and is never copied into this repository.

The script makes the test images deterministically (NumPy, seeded), writes them as 8-bit greyscale PNG files to a
temporary folder, makes a patched copy of ``metricPeilla.m`` in that folder (case 3 reads ``Q`` before assigning
it), runs ``run_references.m`` under Octave with the image package, and writes ``fixtures.json`` next to this file.
It refuses to run if a source file differs from the one recorded in an existing ``fixtures.json``, unless
``--accept-new-sources`` is given; ``--accept-unrecorded-sources`` records files not yet in ``fixtures.json`` while
still requiring every recorded file to match.

Only NumPy and the standard library are needed (plus ``octave`` with the ``image`` package on PATH).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OCTAVE_SCRIPT = HERE / "run_references.m"
DEFAULT_OUTPUT = HERE / "fixtures.json"

VIFB_REPO = "xingchenzhang/VIFB"
VIFB_COMMIT = "5d29ee72176551bca1e7823598f4a1f7f5f2467f"
LIU_REPO = "zhengliu6699/imageFusionMetrics"
LIU_COMMIT = "d6f7f1a0c0a13e7d19bc1e8e4d4f3ad51f439273"
TANG_REPO = "Linfeng-Tang/Image-Fusion"
TANG_COMMIT = "53f5542f0c3b6f457ab7f87f0939127de6dd6a1e"
TANG_FOLDER = "General Evaluation Metric/Evaluation"
FMI_REPO = "mhaghighat/fmi"
FMI_COMMIT = "2268df2606d0dfb81b8807b3ab13c55e2d8b1926"

VIFB_METRICS = [
    "Avg_gradient", "Cross_entropy", "Edge_intensity", "Entropy", "Mutinf", "Psnr", "Qabf",
    "Qcb", "Qcv", "Rmse", "Spatial_frequency", "Ssim", "Variance",
]

# Tang's analysis_Reference.m and every file it runs (Evaluation_for_Single_Image.m, which calls it, is read but
# not run; the other files of the folder are not called).
TANG_FILES = [
    "analysis_Reference.m", "SF_evaluation.m", "SD_evaluation.m", "PSNR_evaluation.m", "MSE_evaluation.m",
    "MI_evaluation.m", "Hab.m", "vifp_mscale.m", "AG_evaluation.m", "CC_evaluation.m", "analysis_SCD.m",
    "analysis_Qabf.m", "analysis_nabf.m", "sobel_fn.m", "per_extn_im_fn.m", "mef_ssim.m", "analysis_ms_ssim.m",
    "analysis_fmi.m",
]
# The outputs of analysis_Reference, in its order; easy = 1 computes the first 11, easy = 0 the other 6.
TANG_METRICS = ["EN", "SF", "SD", "PSNR", "MSE", "MI", "VIF", "AG", "CC", "SCD", "Qabf",
                "Nabf", "SSIM", "MS_SSIM", "FMI_pixel", "FMI_dct", "FMI_w"]
TANG_EASY = TANG_METRICS[:11]
FMI_CALLS = ["fmi_gradient_w3", "fmi_none_w3", "fmi_dct_w3", "fmi_default"]

# (repository, commit, path inside the repository, path under --sources)
REFERENCE_FILES = [
    (VIFB_REPO, VIFB_COMMIT, f"metrics/metrics{m}.m", f"VIFB/metrics/metrics{m}.m") for m in VIFB_METRICS
] + [
    (LIU_REPO, LIU_COMMIT, p, f"imageFusionMetrics/{p}") for p in ("metricXydeas.m", "metricPeilla.m", "ssim_index.m")
] + [
    (TANG_REPO, TANG_COMMIT, f"{TANG_FOLDER}/{f}", f"Tang/{f}") for f in TANG_FILES
] + [
    (FMI_REPO, FMI_COMMIT, "fmi.m", "fmi/fmi.m"),
]

PEILLA_INSERTED_LINE = "Q = metricPeilla(img1, img2, fuse, 2);"
PEILLA_PATCH_REASON = (
    "As published, metricPeilla's `case 3` (Piella & Heijmans' edge-dependent index QE) computes "
    "`Qe=Q*Qw^alpha` but never assigns `Q` in that branch, so it fails ('Q' undefined). Piella & Heijmans define "
    "QE = QW(a,b,f) * QW(a',b',f')^alpha (a', b', f' the edge images; alpha = 1 in the code), and `case 2` of the "
    "same function computes QW(a,b,f) as `Q`. The patch therefore inserts, as the first statement of `case 3`, a "
    "call of case 2 on the original images. It is applied at run time to a copy in a temporary folder; "
    "metricPeilla sw=1 and sw=2, and all other metrics, run from the unmodified files."
)

# Why a metric can return a non-finite number (appended to the absent entry).
NONFINITE_NOTES = {
    "Tang/MS_SSIM": " (analysis_ms_ssim returns -Inf when min(rows, cols)/2^(level-1) = min(rows, cols)/4 is smaller "
    "than the 11-pixel window)",
    "Tang/SCD": " (corr2(F-A, B) or corr2(F-B, A) is 0/0 when F equals a source)",
}

OCTAVE_TIMEOUT_S = 3600  # a run takes about 4 minutes, most of it in fmi.m's loops

# What each reference function does with its arguments (read from the sources; see README.md).
METRIC_NOTES = {
    "VIFB/metricsAvg_gradient": "AG of F only: double(F); gradient() (central differences, one-sided at the border); "
    "sum(sqrt((gx^2+gy^2)/2)) / ((rows-1)*(cols-1)).",
    "VIFB/metricsCross_entropy": "mean over A,B of sum_k P_X(k) log2(P_X(k)/P_F(k)) over 256-bin histograms, "
    "bins with P_X=0 or P_F=0 skipped.",
    "VIFB/metricsEdge_intensity": "EI of F only: double(F); imfilter with fspecial('sobel') and its transpose, "
    "'replicate' borders; mean of sqrt(gx^2+gy^2).",
    "VIFB/metricsEntropy": "Shannon entropy (log2, 256 bins of floor(F)) of F only.",
    "VIFB/metricsMutinf": "MI(A,F) + MI(B,F) (sum, not mean), in nats; each image min-max scaled to 0..255 and "
    "rounded (int16) before a 256x256 joint histogram.",
    "VIFB/metricsPsnr": "20*log10(255/sqrt(M)) with M = (e(A,F)+e(B,F))/2 and e(X,F) = sqrt(sum((X-F)^2))/(rows*cols) "
    "(a norm over the pixel count, not the mean squared error).",
    "VIFB/metricsQabf": "Xydeas-Petrovic Q^AB/F, Tg=0.9994 kg=-15 Dg=0.5 Ta=0.9879 ka=-22 Da=0.8; images are "
    "255*im2double(double(X)), i.e. 255 times the 0..255 values; when gA==gF it sets G=gF (not 1).",
    "VIFB/metricsQcb": "Chen-Blum Q_CB (Liu's metricChenBlum with a VIFB interface).",
    "VIFB/metricsQcv": "Chen-Varshney Q_CV (Liu's metricChen with a VIFB interface).",
    "VIFB/metricsRmse": "(e(A,F)+e(B,F))/2 with e(X,F) = sqrt(sum((X-F)^2))/(rows*cols) (not sqrt of the mean).",
    "VIFB/metricsSpatial_frequency": "SF of F only: sqrt(RF+CF), RF and CF sums of squared horizontal/vertical "
    "first differences each divided by rows*cols.",
    "VIFB/metricsSsim": "SSIM(A,F) + SSIM(B,F) (sum, range up to 2); Gaussian 11x11 sigma 1.5, 'valid' window, "
    "L=255, K=(0.01,0.03).",
    "VIFB/metricsVariance": "Population standard deviation (not variance) of F only.",
    "Liu/metricXydeas": "Liu's Q_G (Xydeas-Petrovic): Sobel via filter2, gamma=1 k=-10 delta=0.5 (strength), "
    "gamma=1 k=-20 delta=0.75 (orientation), result mean2((Qaf.*Wa+Qbf.*Wb)./(Wa+Wb)) (pixel-wise normalised).",
    "Liu/metricPeilla_sw1": "Piella Q (sw=1): mean over ssim_index windows of lambda*SSIM(F,A)+(1-lambda)*SSIM(F,B), "
    "lambda = var_A/(var_A+var_B).",
    "Liu/metricPeilla_sw2": "Piella Q_W (sw=2): as sw=1 weighted by max(var_A, var_B) normalised to sum 1.",
    "Liu/metricPeilla_sw3_unpatched": "Piella Q_E (sw=3) as published: expected to fail (Q undefined).",
    "Liu/metricPeilla_sw3_patched": "Piella Q_E (sw=3) from the patched copy: Q_W(A,B,F) * Q_W(A',B',F') with "
    "A',B',F' the Prewitt edge magnitudes.",
    # Tang: analysis_Reference(F, A, B, easy) with image_ir = A, image_vis = B; image1/2/_fused = im2double(.)
    # are the 0..1 images.
    "Tang/EN": "entropy(F) of the uint8 F (Octave image package: 256-bin imhist, log2).",
    "Tang/SF": "SF_evaluation(im2double(F)): sqrt(mean(diff(F,1,1).^2) + mean(diff(F,1,2).^2)), each mean over its "
    "own differences ((rows-1)*cols, rows*(cols-1)), on the 0..1 scale.",
    "Tang/SD": "SD_evaluation(F) on the uint8 F: u = mean (double), but F-u and .^2 are uint8 arithmetic (negative "
    "deviations saturate to 0, the rest is rounded, squares saturate at 255); sqrt(sum/(rows*cols)).",
    "Tang/PSNR": "PSNR_evaluation(im2double A, B, F): 20*log10(255/sqrt(M)), M = mean of the two mean squared errors "
    "on the 0..1 scale (peak 255 with 0..1 errors: 20*log10(255) dB above the usual PSNR).",
    "Tang/MSE": "MSE_evaluation(im2double A, B, F): (MSE(A,F) + MSE(B,F))/2 on the 0..1 scale.",
    "Tang/MI": "MI_evaluation(A, B, F, 256) on uint8: MI(F,A) + MI(F,B) (sum), bits; marginal entropies from "
    "entropy(), joint entropies from Hab.m's 256x256 histogram of X+1 with uint8 saturation (255+1 = 255, so grey "
    "levels 254 and 255 share a joint bin).",
    "Tang/VIF": "vifp_mscale(A, F) + vifp_mscale(B, F) (sum over sources) on the uint8 images: Sheikh-Bovik pixel VIF, "
    "4 scales, Gaussian N=2^(5-s)+1 sigma N/5, 'valid', sigma_nsq=2; at scale 1 ref.*ref, dist.*dist and ref.*dist "
    "are uint8 products saturating at 255.",
    "Sheikh/vifp_mscale_double": "vifp_mscale(double(A), double(F)) + vifp_mscale(double(B), double(F)): the same "
    "vifp_mscale.m (Tang's copy of Sheikh & Bovik's code) on double images, as its authors' example calls it, so "
    "no uint8 product saturates.",
    "Tang/AG": "AG_evaluation(F): double(F); gradient(); sum(sqrt((gx^2+gy^2)/2)) / ((rows-1)*(cols-1)).",
    "Tang/CC": "CC_evaluation(im2double A, B, F): mean of the Pearson correlations r(A,F), r(B,F) (r(B,F)'s numerator "
    "centres B with mean(A), which changes nothing as sum(F - mean F) = 0).",
    "Tang/SCD": "analysis_SCD(im2double A, B, F): corr2(F-B, A) + corr2(F-A, B).",
    "Tang/Qabf": "analysis_Qabf(im2double A, B, F): Xydeas-Petrovic, Tg=0.9994 kg=-15 Dg=0.5 Ta=0.9879 ka=-22 Da=0.8, "
    "conv2 'same' Sobel (zero padding), angle atan(Sy/Sx) (pi/2 where Sx=0), G=gF where gA==gF, weights gA, gB; on "
    "the 0..1 scale.",
    "Tang/Nabf": "analysis_nabf(im2double F, A, B): Shreyamsha Kumar's modified fusion-artefact measure N_ABF; Sobel/8 "
    "on a mirrored border (per_extn_im_fn), Td=2, wt_min=0.001, Lg=1.5; on the 0..1 scale no edge reaches Td, so all "
    "weights are wt_min.",
    "Tang/SSIM": "mef_ssim(imgSeq, F), imgSeq = cat(3, A, B) as double: Ma et al.'s MEF-SSIM (one structural reference "
    "patch built from both sources), K=0.03, Gaussian 11x11 sigma 1.5, 'valid' windows.",
    "Tang/MS_SSIM": "analysis_ms_ssim(imgSeq, F): MEF-SSIM at 3 scales (2x2 mean, 'symmetric' border, decimation), "
    "weights [0.0448 0.2856 0.3001]/sum; returns -Inf when min(rows, cols)/4 < 11.",
    "Tang/FMI_pixel": "analysis_fmi(im2double A, B, F) (a copy of Haghighat's fmi.m): the default feature is 'edge' "
    "(binary edge() maps: Octave's default Sobel with automatic threshold), not raw pixels as the name says; w=3; "
    "mean over windows of (FMI_AF + FMI_BF)/2.",
    "Tang/FMI_dct": "analysis_fmi(..., 'dct'): needs dct2, which Octave does not provide.",
    "Tang/FMI_w": "analysis_fmi(..., 'wavelet'): needs dwt2 with the 'dmey' wavelet, which Octave does not provide.",
    "Haghighat/fmi_gradient_w3": "fmi(A, B, F, 'gradient', 3): feature = one-output gradient() (horizontal derivative "
    "only); fast-FMI per 3x3 window; result = mean over windows of (FMI_AF + FMI_BF)/2, i.e. already the mean over "
    "the two sources. A window pair that is flat in both images but not equal scores ~1 (1.0000000000000104): "
    "mean(ones(9,1)/9) exceeds 1/9 by 2.8e-17 in floating point, so both centred pdfs are the same tiny constant and "
    "Pearson's c is exactly +1.",
    "Haghighat/fmi_none_w3": "fmi(A, B, F, 'none', 3): as fmi_gradient_w3 on raw pixels.",
    "Haghighat/fmi_dct_w3": "fmi(A, B, F, 'dct', 3): needs dct2, which Octave does not provide.",
    "Haghighat/fmi_default": "fmi(A, B, F): defaults feature='edge', w=3, on double(X) 0..255 images; Octave's edge() "
    "rejects double images outside [0, 1] (MATLAB's accepts them).",
}


# --------------------------------------------------------------------------------------------- sources


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalised_text(data: bytes) -> str:
    """Text of a source file independent of its byte encoding and line endings.

    Several VIFB files have GBK-encoded comments; a text store reads such bytes as Latin-1. So: UTF-8 if the bytes
    decode as UTF-8, else Latin-1; then CRLF/CR -> LF. The code (ASCII) is unaffected either way.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_sources(src_root: Path) -> list[dict]:
    entries = []
    missing = []
    for repo, commit, path, local in REFERENCE_FILES:
        f = src_root / local
        if not f.is_file():
            missing.append(str(f))
            continue
        data = f.read_bytes()
        entries.append({
            "repo": repo,
            "commit": commit,
            "path": path,
            "sha256": sha256_bytes(data),
            "sha256_text": sha256_bytes(normalised_text(data).encode("utf-8")),
            "local": local,
        })
    if missing:
        sys.exit("generate_fixtures: reference source files not found:\n  " + "\n  ".join(missing)
                 + "\nSee Testing/reference_metrics/README.md for how to fetch them.")
    return entries


def check_against_recorded(entries: list[dict], output: Path, accept_new: bool,
                           accept_unrecorded: bool = False) -> None:
    """Refuse sources that differ from those recorded in ``output``.

    ``accept_new`` accepts every difference; ``accept_unrecorded`` accepts only files that ``output`` does not
    record yet (a new toolbox), while recorded files must still match.
    """
    if not output.is_file():
        return
    recorded = {(e["repo"], e["path"]): e for e in json.loads(output.read_text())["sources"]["files"]}
    problems = []
    for e in entries:
        old = recorded.get((e["repo"], e["path"]))
        if old is None:
            message = f"{e['repo']}:{e['path']} is not recorded in {output.name}"
            if accept_unrecorded and not accept_new:
                print(f"warning (accepted, not recorded before): {message}", file=sys.stderr)
                continue
            problems.append(message)
        elif old["commit"] != e["commit"]:
            problems.append(f"{e['repo']}:{e['path']} commit {e['commit']} != recorded {old['commit']}")
        elif e["sha256"] != old["sha256"] and e["sha256_text"] != old["sha256_text"]:
            problems.append(f"{e['repo']}:{e['path']} sha256 {e['sha256']} (text {e['sha256_text']}) differs from "
                            f"the recorded {old['sha256']} (text {old['sha256_text']})")
    if problems and not accept_new:
        sys.exit("generate_fixtures: the reference sources differ from those recorded in "
                 f"{output}:\n  " + "\n  ".join(problems)
                 + "\nCheck the sources (repository, commit, files); rerun with --accept-new-sources to "
                 "record the new ones (--accept-unrecorded-sources accepts only files not recorded yet).")
    for p in problems:
        print(f"warning (accepted): {p}", file=sys.stderr)


def patch_peilla(original: str) -> tuple[str, dict]:
    lines = original.split("\n")
    hits = [i for i, line in enumerate(lines) if re.fullmatch(r"\s*case 3\s*", line)]
    if len(hits) != 1:
        sys.exit(f"generate_fixtures: expected exactly one 'case 3' line in metricPeilla.m, found {len(hits)}")
    i = hits[0]
    indent = re.match(r"\s*", lines[i]).group(0) + "    "
    inserted = indent + PEILLA_INSERTED_LINE
    patched_lines = lines[: i + 1] + [inserted] + lines[i + 1:]
    patched = "\n".join(patched_lines)
    diff = "".join(difflib.unified_diff(
        [s + "\n" for s in lines], [s + "\n" for s in patched_lines],
        fromfile="a/metricPeilla.m", tofile="b/metricPeilla.m", n=2))
    info = {
        "file": f"{LIU_REPO}@{LIU_COMMIT}:metricPeilla.m",
        "inserted_line": PEILLA_INSERTED_LINE,
        "inserted_after_line": i + 1,
        "reason": PEILLA_PATCH_REASON,
        "unified_diff": diff,
        "applies_to": ["Liu/metricPeilla_sw3_patched"],
    }
    return patched, info


# --------------------------------------------------------------------------------------------- images


def _blur(x: np.ndarray, passes: int) -> np.ndarray:
    """Separable [1 2 1]/4 smoothing with edge replication, repeated."""
    y = x.astype(np.float64)
    for _ in range(passes):
        p = np.pad(y, 1, mode="edge")
        y = (p[:-2, 1:-1] + 2 * p[1:-1, 1:-1] + p[2:, 1:-1]) / 4
        p = np.pad(y, 1, mode="edge")
        y = (p[1:-1, :-2] + 2 * p[1:-1, 1:-1] + p[1:-1, 2:]) / 4
    return y


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def _ct_like(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A CT-like slice: dark background, soft tissue disc with a bright rim (bone), two inner blobs, noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    r = np.hypot((y - cy) / (0.42 * h), (x - cx) / (0.42 * w))
    img = 15 + 85 / (1 + np.exp((r - 1.0) * 18))                      # disc, soft edge
    img += 120 * np.exp(-(((r - 0.9) / 0.07) ** 2))                     # bright rim
    img += 40 * np.exp(-(((y - 0.4 * h) ** 2 + (x - 0.35 * w) ** 2) / (2 * (0.08 * w) ** 2)))
    img -= 30 * np.exp(-(((y - 0.6 * h) ** 2 + (x - 0.62 * w) ** 2) / (2 * (0.06 * w) ** 2)))
    img += _blur(rng.normal(0, 6, (h, w)), 1)
    return _u8(img)


def _mri_like(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An MRI-like slice: bright parenchyma with gyral texture, darker rim, smooth bias field, noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    r = np.hypot((y - cy) / (0.40 * h), (x - cx) / (0.40 * w))
    theta = np.arctan2(y - cy, x - cx)
    inside = 1 / (1 + np.exp((r - 1.0) * 14))
    texture = 30 * np.sin(7 * theta + 9 * r) * np.cos(5 * r)
    bias = 1 + 0.15 * (x - cx) / w
    img = 10 + inside * (140 + texture) * bias - 50 * np.exp(-(((r - 0.95) / 0.08) ** 2))
    img += rng.normal(0, 5, (h, w))
    return _u8(img)


def make_cases() -> list[dict]:
    rng = np.random.default_rng(20240611)
    cases = []

    h, w = 40, 48
    a, b = _ct_like(h, w, rng), _mri_like(h, w, rng)
    af, bf = a.astype(np.int32), b.astype(np.int32)
    cases.append({"name": "phantom_average",
                  "description": "CT-like and MRI-like phantoms (40x48); F = (A+B)/2 rounded half up.",
                  "A": a, "B": b, "F": ((af + bf + 1) // 2).astype(np.uint8)})
    cases.append({"name": "phantom_max",
                  "description": "The same A and B; F = pixel-wise max(A, B).",
                  "A": a, "B": b, "F": np.maximum(a, b)})

    # Flat regions; F equal to A on the left part: exercises the zero-gradient (gA = gF = 0) and
    # equal-gradient (gA = gF > 0) rules of Q^AB/F and the zero-variance guards of the SSIM-based metrics.
    h, w = 48, 64
    y, x = np.mgrid[0:h, 0:w]
    a = np.full((h, w), 60, np.uint8)
    a[8:24, 6:26] = 180                                   # flat bright rectangle (left half)
    a[30:44, 10:22] = 120                                 # second flat block (left half)
    a[10:40, 38:58] = 200                                 # flat block (right half)
    b = np.full((h, w), 90, np.uint8)                     # B flat on the left ...
    b[:, 32:] = _u8(40 + 3 * (x[:, 32:] - 32) + 2 * y[:, 32:])  # ... a linear ramp on the right
    b[16:36, 44:54] = 230                                 # and a flat block inside the ramp
    f = np.empty_like(a)
    f[:, :32] = a[:, :32]                                 # F == A on the left half
    f[:, 32:] = ((a[:, 32:].astype(np.int32) + b[:, 32:] + 1) // 2).astype(np.uint8)
    f[0:4, :] = 60                                        # a strip flat in A, B and F alike (top rows)
    a[0:4, :] = 60
    b[0:4, :] = 90
    cases.append({"name": "flat_partial_copy",
                  "description": "Piecewise-flat A; B flat on the left and a ramp on the right (48x64); F = A on the "
                  "left half, rounded mean of A and B on the right; top 4 rows flat in all three.",
                  "A": a, "B": b, "F": f})

    h, w = 64, 64
    a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    b = rng.integers(0, 256, (h, w), dtype=np.uint8)
    cases.append({"name": "noise_mix",
                  "description": "Independent uniform noise A and B (64x64); F = 0.7*A + 0.3*B rounded half up.",
                  "A": a, "B": b, "F": _u8(0.7 * a.astype(np.float64) + 0.3 * b)})

    h, w = 52, 40                                         # taller than wide: catches row/column mix-ups
    a, b = _mri_like(h, w, rng), _ct_like(h, w, rng)
    cases.append({"name": "tall_copy_of_A",
                  "description": "MRI-like A and CT-like B, 52 rows x 40 columns; F = A exactly.",
                  "A": a, "B": b, "F": a.copy()})

    # Medical images sit on black: windows that are 0 in every image take the reference code's
    # flat-window rule (metricPeilla.m's 0.5) and give Q^AB/F no edge; a zero-padded border sees none.
    h, w = 56, 48
    y, x = np.mgrid[0:h, 0:w]
    head = ((y - (h - 1) / 2) / (0.36 * h)) ** 2 + ((x - (w - 1) / 2) / (0.36 * w)) ** 2 <= 1
    a, b = _ct_like(h, w, rng) * head, _mri_like(h, w, rng) * head
    cases.append({"name": "black_background",
                  "description": "CT-like and MRI-like phantoms inside an ellipse, exactly 0 outside it (56x48); "
                  "F = (A+B)/2 rounded half up, 0 outside too.",
                  "A": a, "B": b, "F": ((a.astype(np.int32) + b + 1) // 2).astype(np.uint8)})
    return cases


def write_png(path: Path, img: np.ndarray) -> None:
    """Write a 2-D uint8 array as an 8-bit greyscale PNG (no dependency beyond zlib)."""
    assert img.dtype == np.uint8 and img.ndim == 2
    h, w = img.shape
    raw = b"".join(b"\x00" + img[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------------------------- Octave


def run_octave(octave: str, env_paths: dict) -> str:
    env = dict(os.environ, **env_paths)
    script = str(OCTAVE_SCRIPT).replace("'", "''")
    cmd = [octave, "--no-gui", "--quiet", "--norc", "--eval", f"pkg load image; source('{script}');"]
    print("running:", " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=OCTAVE_TIMEOUT_S)
    if "DONE" not in proc.stdout.splitlines():
        sys.exit(f"generate_fixtures: Octave did not finish (exit status {proc.returncode}).\n"
                 f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc.stdout


def parse_output(stdout: str) -> dict:
    out = {"versions": {}, "images": {}, "values": {}, "errors": {}, "which": {}, "check": {}, "check_errors": {}}
    for line in stdout.splitlines():
        parts = line.split("\t")
        tag = parts[0]
        if tag == "VERSION":
            out["versions"][parts[1]] = parts[2]
        elif tag == "IMAGE":
            out["images"][(parts[1], parts[2])] = (parts[3], int(parts[4]), int(parts[5]), float(parts[6]),
                                                   float(parts[7]))
        elif tag == "VALUE":
            out["values"][(parts[1], parts[2])] = float(parts[3])
        elif tag == "ERROR":
            out["errors"][(parts[1], parts[2])] = parts[3] if len(parts) > 3 else ""
        elif tag == "WHICH":
            out["which"][parts[1]] = parts[2] if len(parts) > 2 else ""
        elif tag == "CHECK":
            out["check"][(parts[1], f"Tang/{parts[2]}")] = float(parts[3])
        elif tag == "CHECKERR":
            out["check_errors"][parts[1]] = parts[2] if len(parts) > 2 else ""
    return out


def metric_names() -> list[str]:
    return [f"VIFB/metrics{m}" for m in VIFB_METRICS] + [
        "Liu/metricXydeas", "Liu/metricPeilla_sw1", "Liu/metricPeilla_sw2",
        "Liu/metricPeilla_sw3_unpatched", "Liu/metricPeilla_sw3_patched"] + [
        f"Tang/{m}" for m in TANG_METRICS] + ["Sheikh/vifp_mscale_double"] + [f"Haghighat/{c}" for c in FMI_CALLS]


# --------------------------------------------------------------------------------------------- JSON


def dump_json(obj: dict) -> str:
    """Indented JSON with every image row on one line."""
    rows = {}

    def strip(o):
        if isinstance(o, np.ndarray):
            key = f"@@IMG{len(rows)}@@"
            rows[key] = o
            return key
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items()}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o

    text = json.dumps(strip(obj), indent=2, ensure_ascii=False, allow_nan=False)
    for key, img in rows.items():
        m = re.search(rf'^( *).*"{key}"', text, flags=re.M)
        pad = m.group(1) + "  "
        body = ",\n".join(pad + "[" + ", ".join(str(int(v)) for v in row) + "]" for row in img.tolist())
        text = text.replace(f'"{key}"', "[\n" + body + "\n" + m.group(1) + "]")
    return text + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", required=True, type=Path,
                    help="folder holding VIFB/, imageFusionMetrics/, Tang/ and fmi/ at the recorded commits")
    ap.add_argument("--accept-new-sources", action="store_true",
                    help="record sources that differ from those in the existing fixtures.json")
    ap.add_argument("--accept-unrecorded-sources", action="store_true",
                    help="record source files that the existing fixtures.json does not list yet; files it lists "
                         "must still match")
    ap.add_argument("--octave", default="octave", help="the Octave executable (default: octave)")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write (default: %(default)s)")
    args = ap.parse_args(argv)

    src_root = args.sources.resolve()
    entries = read_sources(src_root)
    check_against_recorded(entries, args.output, args.accept_new_sources, args.accept_unrecorded_sources)
    cases = make_cases()

    with tempfile.TemporaryDirectory(prefix="medfusion_refmet_") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        for c in cases:
            (data / c["name"]).mkdir(parents=True)
            for t in "ABF":
                write_png(data / c["name"] / f"{t}.png", c[t])
        (data / "cases.txt").write_text("".join(c["name"] + "\n" for c in cases))

        original = normalised_text((src_root / "imageFusionMetrics/metricPeilla.m").read_bytes())
        patched, patch_info = patch_peilla(original)
        (tmp / "peilla_patched").mkdir()
        (tmp / "peilla_patched" / "metricPeilla.m").write_text(patched, encoding="utf-8")

        stdout = run_octave(args.octave, {
            "REFMET_DATA": str(data),
            "REFMET_VIFB": str(src_root / "VIFB" / "metrics"),
            "REFMET_LIU": str(src_root / "imageFusionMetrics"),
            "REFMET_PATCHED": str(tmp / "peilla_patched"),
            "REFMET_TANG": str(src_root / "Tang"),
            "REFMET_FMI": str(src_root / "fmi"),
        })
    res = parse_output(stdout)

    # The images Octave read must be the ones made here.
    for c in cases:
        for t in "ABF":
            img = c[t]
            v = img.ravel(order="F").astype(np.float64)
            expect = ("uint8", img.shape[0], img.shape[1], float(v.sum()),
                      float((v * np.arange(1, v.size + 1)).sum()))
            got = res["images"].get((c["name"], t))
            if got != expect:
                sys.exit(f"generate_fixtures: Octave read {c['name']}/{t}.png as {got}, expected {expect}")

    # Which function files Octave used.
    for fn, where in res["which"].items():
        if fn == "metricPeilla_patched":
            ok = where.startswith(str(Path(tempfile.gettempdir()).resolve())) or "peilla_patched" in where
        else:
            # Tang/ may be a link to the folder inside a clone of Image-Fusion.
            ok = where.startswith(str(src_root)) or any(
                where.startswith(str((src_root / d).resolve())) for d in ("Tang", "fmi"))
        if not ok:
            sys.exit(f"generate_fixtures: Octave resolved {fn} to {where!r}, not to the given sources")

    names = metric_names()
    out_cases = []
    for c in cases:
        values, absent = {}, {}
        for m in names:
            key = (c["name"], m)
            if key in res["values"] and not np.isfinite(res["values"][key]):
                absent[m] = f"non-finite result {res['values'][key]!r}" + NONFINITE_NOTES.get(m, "")
            elif key in res["values"]:
                values[m] = res["values"][key]
            elif key in res["errors"]:
                absent[m] = res["errors"][key]
            else:
                absent[m] = "no output from Octave"
        out_cases.append({"name": c["name"], "description": c["description"], "shape": list(c["A"].shape),
                          "values": values, "absent": absent, "A": c["A"], "B": c["B"], "F": c["F"]})

    # analysis_Reference(F, A, B, 1) itself must give exactly the numbers of the per-metric calls.
    check_errors = {}
    for c in cases:
        if c["name"] in res["check_errors"]:
            check_errors[c["name"]] = res["check_errors"][c["name"]]
            continue
        for m in TANG_EASY:
            key = (c["name"], f"Tang/{m}")
            mine, theirs = res["values"].get(key), res["check"].get(key)
            if mine is None or theirs is None or not (mine == theirs or (np.isnan(mine) and np.isnan(theirs))):
                sys.exit(f"generate_fixtures: {c['name']}: Tang/{m} = {mine!r} from the per-metric call, but "
                         f"analysis_Reference(F, A, B, 1) gave {theirs!r}")
    tang_check = {
        "call": "[EN, SF, SD, PSNR, MSE, MI, VIF, AG, CC, SCD, Qabf] = analysis_Reference(F, A, B, 1)",
        "result": "identical to the per-metric values in every case" if not check_errors else
                  "identical to the per-metric values in the cases without an error",
        "errors": check_errors,
        "not_run": "analysis_Reference(F, A, B, 0): it computes FMI_dct, which fails under Octave (no dct2), so the "
                   "call as a whole fails; its six metrics are recorded one by one.",
    }

    # Metrics that failed on every case, with their (first) reason.
    absent_metrics = {}
    for m in names:
        reasons = [oc["absent"][m] for oc in out_cases if m in oc["absent"]]
        if len(reasons) == len(out_cases):
            absent_metrics[m] = reasons[0]

    doc = {
        "description": "Fusion-metric values computed by published MATLAB reference code (VIFB, Z. Liu's "
                       "imageFusionMetrics, L. Tang's Image-Fusion evaluation code and M. Haghighat's fmi.m) run "
                       "under GNU Octave on small uint8 test images. Generated by "
                       "Testing/reference_metrics/generate_fixtures.py; see README.md there. Images are row-major "
                       "lists of rows; A and B are the sources (VIFB's imgVI, imgIR), F the fused image.",
        "sources": {
            "octave_version": res["versions"].get("octave"),
            "image_package_version": res["versions"].get("image"),
            "files": [{k: e[k] for k in ("repo", "commit", "path", "sha256", "sha256_text")} for e in entries],
            "sha256_note": "sha256: the bytes of the file used; sha256_text: the file's text after decoding "
                           "(UTF-8, else Latin-1) and converting line endings to LF, encoded as UTF-8. A source "
                           "matches if either agrees.",
            "metricPeilla_patch": patch_info,
            "Tang_analysis_Reference_check": tang_check,
        },
        "calls": {
            "VIFB": "res = metricsX(A, B, F) with A, B, F uint8 as returned by imread, as VIFB's "
                    "compute_metrics.m passes (imgVI, imgIR, sFused).",
            "Liu": "res = metricX(double(A), double(B), double(F)) (fusionAssess.m applies double() to the "
                   "sources); metricPeilla(..., sw) for sw = 1, 2, 3.",
            "Tang": "Evaluation_for_Single_Image.m calls analysis_Reference(fused_image, ir_image, vi_image, easy) "
                    "with the three images as returned by imread; here ir_image = A, vi_image = B, fused_image = F "
                    "(uint8). Each metric is called as analysis_Reference calls it (its conversions: im2double to "
                    "0..1 for SF, PSNR, MSE, CC, SCD, Qabf, Nabf, FMI; uint8 for EN, SD, MI, VIF, AG; "
                    "imgSeq = cat(3, A, B) as double for SSIM and MS_SSIM; VIF summed over the two sources), one "
                    "metric per call; keys are analysis_Reference's output names.",
            "Haghighat": "nfmi = fmi(A, B, F, feature, w) with A, B, F uint8 as read (fmi.m applies double()); "
                         "fmi_default is fmi(A, B, F), i.e. feature 'edge', w = 3.",
        },
        "metric_notes": {m: METRIC_NOTES[m] for m in names},
        "absent_metrics": absent_metrics,
        "cases": out_cases,
    }
    args.output.write_text(dump_json(doc), encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    for oc in out_cases:
        print(oc["name"], json.dumps(oc["values"]), file=sys.stderr)
    for m, why in absent_metrics.items():
        print(f"absent: {m}: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
