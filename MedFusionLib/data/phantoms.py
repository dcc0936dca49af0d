"""Registered multimodal head phantoms with known anatomy, 2D and 3D.

We have no clinical data set, so training and test images are generated here:
:func:`head_labels` draws a random head anatomy (a label map of :class:`Tissue`),
:func:`render` turns it into one modality, :func:`make_pair` does both for two
or more co-registered modalities, and :func:`mni152_slices` builds the same
structure from the MNI152 template shipped inside nilearn (optional).
Everything is a pure function of integer seeds (``numpy.random.Generator``).

Axes: 2D arrays are ``(H, W)`` = (anterior->posterior, left->right); 3D arrays
are ``(D, H, W)`` = (superior->inferior, anterior->posterior, left->right).
Pixels are taken as isotropic (default spacing 1 mm).

Tissue means (before the per-seed +-10 % perturbation; CT in HU, the others in
arbitrary positive units; T1/T2 ~ spin-echo contrast, PET ~ FDG SUV x 1,
SPECT ~ perfusion counts with GM = 100):

=============  ======  ======  ======  =====  =====
tissue         CT      MRI_T1  MRI_T2  PET    SPECT
=============  ======  ======  ======  =====  =====
background     -1000   0       0       0      0
scalp (+fat)   25      800     350     0.8    15
skull          1000    60      40      0.3    5
CSF            8       150     1000    0.2    3
grey matter    40      450     550     8.0    100
white matter   28      650     380     2.5    35
deep grey      38      500     480     7.5    95
tumour         45      400     700     12.0   70
necrosis       15      200     950     0.3    5
oedema         18      330     850     1.5    25
haemorrhage    70      750     250     1.0    10
calcification  400     200     80      0.3    5
=============  ======  ======  ======  =====  =====

Degradations (defaults in :data:`DEFAULT_NOISE`, :data:`DEFAULT_BLUR`, ...):
``noise`` is a standard deviation as a fraction of the modality's reference
level :data:`NOISE_REFERENCE` (CT 1000 HU, T1 = WM, T2 = CSF, PET/SPECT = GM):
Gaussian for CT, Rician for MRI, Poisson-like (variance proportional to the
signal, spatially correlated as after reconstruction) for PET/SPECT. ``blur``
is the FWHM in pixels of a Gaussian PSF. ``texture`` is the relative amplitude
of a fine multiplicative intra-tissue texture, ``bias`` the amplitude of a
smooth multiplicative bias field (MRI only by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Any, Mapping, Sequence, Union

import numpy as np
from scipy import ndimage

from ..errors import InputError


class MissingDependencyError(InputError, ImportError):
    """An optional package needed by the requested function is not installed."""


class Tissue(IntEnum):
    """Label values of a head phantom."""

    BACKGROUND = 0
    SCALP = 1
    SKULL = 2
    CSF = 3
    GREY_MATTER = 4
    WHITE_MATTER = 5
    DEEP_GREY = 6
    TUMOUR = 7
    NECROSIS = 8
    OEDEMA = 9
    HAEMORRHAGE = 10
    CALCIFICATION = 11


NORMAL_TISSUES: tuple[Tissue, ...] = tuple(Tissue)[:7]
LESION_TISSUES: tuple[Tissue, ...] = tuple(Tissue)[7:]
MODALITIES: tuple[str, ...] = ("CT", "MRI_T1", "MRI_T2", "PET", "SPECT")
# Fixed ids (not list positions) so adding a modality never changes existing phantoms.
_MODALITY_ID = {"CT": 11, "MRI_T1": 12, "MRI_T2": 13, "PET": 14, "SPECT": 15}

_T = Tissue
# Columns in Tissue order: BG, scalp, skull, CSF, GM, WM, deep, tumour, necrosis, oedema, haem, calc.
TISSUE_MEANS: dict[str, dict[Tissue, float]] = {
    name: dict(zip(Tissue, values))
    for name, values in {
        "CT": (-1000, 25, 1000, 8, 40, 28, 38, 45, 15, 18, 70, 400),
        "MRI_T1": (0, 800, 60, 150, 450, 650, 500, 400, 200, 330, 750, 200),
        "MRI_T2": (0, 350, 40, 1000, 550, 380, 480, 700, 950, 850, 250, 80),
        "PET": (0, 0.8, 0.3, 0.2, 8.0, 2.5, 7.5, 12.0, 0.3, 1.5, 1.0, 0.3),
        "SPECT": (0, 15, 5, 3, 100, 35, 95, 70, 5, 25, 10, 5),
    }.items()
}
NOISE_REFERENCE: dict[str, float] = {"CT": 1000.0, "MRI_T1": 650.0, "MRI_T2": 1000.0, "PET": 8.0, "SPECT": 100.0}
# CT: 4 HU, the soft-tissue noise of a modern head CT (3-5 HU); more makes the brain window
# look like noise and teaches fusion to keep it.
DEFAULT_NOISE: dict[str, float] = {"CT": 0.004, "MRI_T1": 0.03, "MRI_T2": 0.03, "PET": 0.08, "SPECT": 0.12}
DEFAULT_BLUR: dict[str, float] = {"CT": 0.8, "MRI_T1": 1.0, "MRI_T2": 1.0, "PET": 4.5, "SPECT": 8.0}
DEFAULT_TEXTURE: dict[str, float] = {"CT": 0.05, "MRI_T1": 0.04, "MRI_T2": 0.04, "PET": 0.05, "SPECT": 0.05}
DEFAULT_BIAS: dict[str, float] = {"CT": 0.0, "MRI_T1": 0.12, "MRI_T2": 0.12, "PET": 0.0, "SPECT": 0.0}

PerModality = Union[None, float, Mapping[str, Union[float, None]]]


@dataclass
class Phantom:
    """A set of co-registered images of one anatomy.

    :param labels: integer :class:`Tissue` label map, shape ``(H, W)`` or ``(D, H, W)``.
    :param images: modality name -> degraded float32 image (blur + noise), native units.
    :param clean: modality name -> noise-free float32 image (PSF blur included).
    :param seed: the seed the anatomy and renderings were drawn from.
    :param spacing: pixel size in mm per axis.
    :param sharp: modality name -> noise-free image without the PSF (ideal tissue contrast).
    """

    labels: np.ndarray
    images: dict[str, np.ndarray]
    clean: dict[str, np.ndarray]
    seed: int
    spacing: tuple[float, ...]
    sharp: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names in rendering order."""
        return tuple(self.images)


# ----------------------------------------------------------------------------- helpers
def _check_seed(seed: Any, name: str = "seed") -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"{name} must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape must be a tuple of 2 or 3 integers, got {shape!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 32:
        raise InputError(f"shape must be (H, W) or (D, H, W) with every size >= 32, got {shape}")
    return shape


def _check_modality(modality: str) -> str:
    name = str(modality).upper().replace("-", "_")
    name = {"T1": "MRI_T1", "T2": "MRI_T2", "MRI": "MRI_T1"}.get(name, name)
    if name not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    return name


def _non_negative(value: Any, name: str) -> float:
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field with a correlation length of about ``scale`` pixels.

    Cubic-spline upsampling of a coarse white-noise grid, done axis by axis
    with small interpolation matrices: the same result as ``ndimage.zoom`` but
    ~20x faster in 3D, and far cheaper than filtering full-size noise.
    """
    coarse = [max(3, int(np.ceil(n / max(scale, 1.0))) + 1) for n in shape]
    f = rng.standard_normal(coarse)
    for axis, (n, m) in enumerate(zip(shape, coarse)):
        f = np.moveaxis(np.tensordot(_upsampler(n, m), f, axes=([1], [axis])), 0, axis)
    f = f.astype(np.float32)
    f -= f.mean()
    return f / max(float(f.std()), 1e-12)


@lru_cache(maxsize=64)
def _upsampler(n: int, m: int) -> np.ndarray:
    """(n, m) matrix of cubic-spline interpolation weights (zoom of the identity's columns)."""
    return ndimage.zoom(np.eye(m), (n / m, 1), order=3, mode="nearest", grid_mode=True)[:n]


def _fine_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Unit-std white noise smoothed by a Gaussian of ``sigma`` px (spatially correlated noise)."""
    f = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0:
        f = ndimage.gaussian_filter(f, sigma, mode="reflect", truncate=3.0)
    return f / max(float(f.std()), 1e-12)


def _ellipsoid(coords: dict[str, Any], centre: Sequence[float], axes: Sequence[float],
               angle: float = 0.0) -> np.ndarray:
    """Mask of an ellipsoid in normalised head coordinates, rotated by ``angle`` in the axial plane."""
    c, s = np.cos(angle), np.sin(angle)
    lr, ap = coords["lr"] - centre[0], coords["ap"] - centre[1]
    q = ((c * lr + s * ap) / axes[0]) ** 2 + ((-s * lr + c * ap) / axes[1]) ** 2
    if coords["si"] is not None:  # 3D only; in 2D the slice passes through the centre
        q = q + ((coords["si"] - centre[2]) / axes[2]) ** 2
    return q < 1.0


# ----------------------------------------------------------------------------- anatomy
def head_labels(shape: Sequence[int], seed: int = 0, *, lesions: bool = True,
                n_tumours: int | None = None, n_haemorrhages: int | None = None,
                n_calcifications: int | None = None, deformation: float = 1.0) -> np.ndarray:
    """Draw a random head anatomy as a :class:`Tissue` label map.

    Concentric, irregular layers (scalp, skull of variable thickness, CSF, a
    folded grey-matter ribbon with sulci, white matter), a midline fissure,
    lateral/third ventricles, paired deep grey nuclei and, optionally, lesions.
    All boundaries are perturbed by low-frequency random fields and the whole
    coordinate grid is elastically deformed, so every seed gives new geometry.

    :param shape: ``(H, W)`` or ``(D, H, W)``, every size >= 32; need not be square.
    :param seed: non-negative integer; same seed -> identical labels.
    :param lesions: if False, a healthy head (the lesion counts are ignored).
    :param n_tumours: tumours (each with oedema, tumour rim and necrotic core); None -> random 1-2.
    :param n_haemorrhages: haemorrhages; None -> random 1-2.
    :param n_calcifications: calcifications; None -> random 1-3.
    :param deformation: scale of the elastic deformation (0 = none, 1 = default).
    :return: ``uint8`` label array of ``shape``.
    """
    shape = _check_shape(shape)
    rng = np.random.default_rng([_check_seed(seed), 0xA7])
    deformation = _non_negative(deformation, "deformation")
    counts = [n_tumours, n_haemorrhages, n_calcifications]
    for i, (n, lo, hi) in enumerate(zip(counts, (1, 1, 1), (2, 2, 3))):
        draw = int(rng.integers(lo, hi + 1))  # always drawn: keeps the stream independent of the arguments
        counts[i] = 0 if not lesions else (draw if n is None else int(_non_negative(n, "lesion count")))

    ndim = len(shape)
    # Head semi-axes: 82-92 % of the half-size of each axis, centre jittered by 2 %.
    semi = np.array([n / 2 * rng.uniform(0.82, 0.92) for n in shape])
    centre = np.array([n / 2 - 0.5 + rng.uniform(-0.02, 0.02) * n for n in shape])
    radius_px = float(semi.mean())
    big = radius_px / 2  # correlation length of the slowly varying fields

    grid = list(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    # Elastic deformation: smoothed random displacements of ~2.5 % of the head radius.
    for axis in range(ndim):
        grid[axis] += (deformation * 0.025 * radius_px) * _smooth_field(rng, shape, big)
    u = [(g - c) / a for g, c, a in zip(grid, centre, semi)]
    r = np.sqrt(sum(x * x for x in u))
    coords = {"lr": u[-1], "ap": u[-2], "si": u[0] if ndim == 3 else None}

    def thick(fraction: float, min_px: float) -> float:
        # Thin layers keep at least ~1.5 px so they survive small images.
        return max(fraction, min_px / radius_px)

    # Layer boundaries in normalised radius, each with its own irregularity.
    r_head = 1.0 + 0.03 * _smooth_field(rng, shape, big)
    r_skull = r_head - thick(0.05, 1.5) * (1 + 0.25 * _smooth_field(rng, shape, big))
    skull_t = thick(rng.uniform(0.05, 0.09), 1.5)
    r_inner = r_skull - skull_t * np.clip(1 + 0.35 * _smooth_field(rng, shape, big), 0.5, 2.0)
    r_brain = r_inner - thick(0.025, 1.0) * np.clip(1 + 0.4 * _smooth_field(rng, shape, big), 0.4, 2.0)

    # Cortex: sulci are radial CSF clefts where a field sampled on a sphere inside
    # the brain crosses zero (so they run along the radius, like real sulci).
    # The GM ribbon follows them: the WM surface dips to the floor of each sulcus,
    # leaving gyri with WM cores in between.
    proj = [c + a * x / (r + 1e-6) * 0.7 for c, a, x in zip(centre, semi, u)]
    angular = _smooth_field(rng, shape, 0.15 * radius_px)
    s = np.abs(ndimage.map_coordinates(angular, proj, order=1, mode="nearest"))
    depth = 0.13 * np.clip(1 + 0.4 * _smooth_field(rng, shape, big), 0.4, 1.6)
    cortex = (r < r_brain) & (r > r_brain - depth)
    w = float(np.quantile(s[cortex], 0.10)) if cortex.any() else 0.0  # ~10 % of the cortex is sulcal
    r_wm = r_brain - thick(0.045, 1.2) - depth * np.exp(-((s / (5 * w + 1e-6)) ** 2))

    labels = np.zeros(shape, dtype=np.uint8)
    labels[r < r_head] = _T.SCALP
    labels[r < r_skull] = _T.SKULL
    labels[r < r_inner] = _T.CSF
    labels[r < r_brain] = _T.GREY_MATTER
    labels[r < r_wm] = _T.WHITE_MATTER
    labels[cortex & (s < w)] = _T.CSF
    # Interhemispheric fissure: a midline CSF gap at least 1 px wide.
    fissure_w = max(0.012, 0.6 / semi[-1])
    labels[(np.abs(coords["lr"]) < fissure_w) & (r < r_brain) & (r > 0.5 * r_brain)] = _T.CSF

    # Deep grey nuclei (putamen- and thalamus-like pairs), then ventricles over them.
    size = rng.uniform(0.85, 1.15, 4)
    for side in (-1, 1):
        labels[_ellipsoid(coords, (side * 0.24, -0.02, 0.0), 0.8 * size[0] * np.array([0.07, 0.16, 0.14]),
                          side * 0.15)] = _T.DEEP_GREY
        labels[_ellipsoid(coords, (side * 0.09, 0.14, 0.02), size[1] * np.array([0.07, 0.11, 0.1]))] = _T.DEEP_GREY
    vent = rng.uniform(0.8, 1.3)  # ventricle size varies strongly between subjects
    for side in (-1, 1):
        labels[_ellipsoid(coords, (side * 0.09, -0.08, -0.06), vent * np.array([0.045, 0.22, 0.12]),
                          -side * 0.18)] = _T.CSF
    labels[_ellipsoid(coords, (0.0, 0.12, 0.0), vent * np.array([max(0.012, 0.6 / semi[-1]), 0.06, 0.1]))] = _T.CSF

    if sum(counts):
        _add_lesions(labels, grid, r < r_brain, r < 0.75 * r_brain, counts, rng, radius_px, shape)
    return labels


def _add_lesions(labels: np.ndarray, grid: list[np.ndarray], brain: np.ndarray, deep: np.ndarray,
                 counts: list[int], rng: np.random.Generator, radius_px: float, shape: tuple[int, ...]) -> None:
    """Paint tumours, haemorrhages and calcifications in place, avoiding overlaps where possible.

    Lesions stay inside ``brain`` (the intracranial mask); centres lie in
    parenchyma within ``deep``; oedema only replaces parenchyma.
    """
    shape_noise = np.clip(_smooth_field(rng, shape, 0.08 * radius_px), -1.5, 1.5)
    parenchyma = np.isin(labels, (_T.GREY_MATTER, _T.WHITE_MATTER, _T.DEEP_GREY))
    candidates = np.flatnonzero(parenchyma & deep)
    if candidates.size == 0:
        candidates = np.flatnonzero(brain)
    placed: list[tuple[np.ndarray, float]] = []

    def blob(extent: float) -> tuple[np.ndarray, float]:
        # Rejection-sample a centre voxel whose blob does not touch earlier ones.
        for _ in range(60):
            idx = np.unravel_index(candidates[rng.integers(candidates.size)], shape)
            c = np.array([g[idx] for g in grid])  # deformed coordinates: the centre voxel is always inside
            if all(np.linalg.norm(c - p) > extent + e + 1 for p, e in placed):
                break
        placed.append((c, extent))
        d = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grid, c)))
        return d / (1 + 0.25 * shape_noise), extent

    for _ in range(counts[0]):  # tumour: oedema halo, enhancing rim, necrotic core
        rad = max(3.0, rng.uniform(0.08, 0.15) * radius_px)
        halo = rad * rng.uniform(1.4, 1.9)
        d, _ = blob(halo)
        labels[(d < halo) & parenchyma] = _T.OEDEMA
        labels[(d < rad) & brain] = _T.TUMOUR
        labels[(d < max(1.2, rad * rng.uniform(0.3, 0.6))) & brain] = _T.NECROSIS
    for _ in range(counts[1]):
        rad = max(2.0, rng.uniform(0.04, 0.08) * radius_px)
        d, _ = blob(rad)
        labels[(d < rad) & brain] = _T.HAEMORRHAGE
    for _ in range(counts[2]):
        rad = max(1.5, rng.uniform(0.01, 0.025) * radius_px)
        d, _ = blob(rad)
        labels[(d < rad) & brain] = _T.CALCIFICATION


# ----------------------------------------------------------------------------- rendering
def _perturbed_means(modality: str, seed: int, perturb: float) -> np.ndarray:
    """Tissue-mean lookup table with a per-seed multiplicative jitter of +-``perturb``."""
    rng = np.random.default_rng([seed, _MODALITY_ID[modality], 1])
    table = np.array([TISSUE_MEANS[modality][t] for t in Tissue], dtype=np.float64)
    jitter = 1 + rng.uniform(-perturb, perturb, table.size)
    jitter[_T.BACKGROUND] = 1.0  # air is physically fixed (-1000 HU / no signal)
    return table * jitter


def _texture_and_bias(modality: str, seed: int, shape: tuple[int, ...], texture: float,
                      bias: float) -> np.ndarray:
    """Multiplicative field: fine intra-tissue texture times a smooth (MRI-like) bias field."""
    # Texture depends on the seed only: the same micro-anatomy in every modality.
    mult = 1 + texture * _smooth_field(np.random.default_rng([seed, 2]), shape, 2.5)
    if bias > 0:
        rng = np.random.default_rng([seed, _MODALITY_ID[modality], 3])
        mult *= np.exp(bias * _smooth_field(rng, shape, max(shape) / 2.5))
    return mult


def _blur(image: np.ndarray, fwhm: float) -> np.ndarray:
    if fwhm <= 0:
        return image
    return ndimage.gaussian_filter(image, fwhm / 2.3548, mode="nearest", truncate=3.0)


def _add_noise(clean: np.ndarray, modality: str, level: float, blur: float,
               rng: np.random.Generator) -> np.ndarray:
    """Apply the modality's noise model; ``level`` is a fraction of :data:`NOISE_REFERENCE`."""
    sigma = level * NOISE_REFERENCE[modality]
    if sigma == 0:
        return clean.copy()
    if modality == "CT":  # quantum + electronic noise after filtered back-projection: ~Gaussian
        return clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    if modality.startswith("MRI"):  # magnitude of complex Gaussian noise: Rician
        re = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
        im = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
        return np.sqrt(re * re + im * im)
    # PET/SPECT: Poisson-like variance proportional to the signal, correlated over
    # about a quarter of the PSF as in iteratively reconstructed, post-filtered images.
    corr = _fine_field(rng, clean.shape, max(0.5, blur / 4))
    scale = np.sqrt(np.maximum(clean, 0) / NOISE_REFERENCE[modality])
    return np.maximum(clean + sigma * scale * corr, 0)


def _option(value: PerModality, modality: str, default: dict[str, float], name: str) -> float:
    if isinstance(value, Mapping):
        value = {_check_modality(k): v for k, v in value.items()}.get(modality)
    return default[modality] if value is None else _non_negative(value, name)


def render(labels: np.ndarray, modality: str, seed: int = 0, *, noise: float | None = None,
           blur: float | None = None, texture: float | None = None, bias: float | None = None,
           perturb: float = 0.1, noise_seed: int | None = None,
           return_clean: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render a label map as one modality (see the module docstring for the tables).

    Pipeline: perturbed tissue means -> x texture/bias field -> PSF blur (= clean)
    -> noise (= image). The clean part depends on ``seed`` only, the noise on
    ``noise_seed`` (default ``seed``), so two renders that differ only in
    ``noise_seed`` have identical clean images.

    :param labels: integer :class:`Tissue` map, 2D or 3D.
    :param modality: "CT", "MRI_T1", "MRI_T2", "PET" or "SPECT" (also "T1", "T2").
    :param seed: non-negative integer for mean perturbation, texture and bias.
    :param noise: std as a fraction of the reference level; None -> :data:`DEFAULT_NOISE`.
    :param blur: PSF FWHM in pixels; None -> :data:`DEFAULT_BLUR`.
    :param texture: relative texture amplitude; None -> :data:`DEFAULT_TEXTURE`.
    :param bias: bias-field amplitude (log scale); None -> :data:`DEFAULT_BIAS`.
    :param perturb: max relative jitter of the tissue means (0 = exact table).
    :param noise_seed: seed of the noise only; None -> ``seed``.
    :param return_clean: also return the clean and the sharp (no PSF) images.
    :return: float32 image in native units, or ``(image, clean, sharp)``.
    """
    modality = _check_modality(modality)
    seed = _check_seed(seed)
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be a 2D or 3D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(Tissue)):
        raise InputError(f"labels must hold Tissue values 0..{len(Tissue) - 1}")
    means = _perturbed_means(modality, seed, _non_negative(perturb, "perturb"))
    texture = _option(texture, modality, DEFAULT_TEXTURE, "texture")
    bias = _option(bias, modality, DEFAULT_BIAS, "bias")
    sharp = _apply_fields(means[labels].astype(np.float32), labels > 0, modality, seed, texture, bias)
    return _degrade(sharp, modality, seed, noise, blur, noise_seed, return_clean)


def _apply_fields(base: np.ndarray, head: np.ndarray, modality: str, seed: int, texture: float,
                  bias: float) -> np.ndarray:
    mult = _texture_and_bias(modality, seed, base.shape, texture, bias)
    # Air stays exactly at its table value: no texture or bias outside the head.
    return np.where(head, base * mult, base).astype(np.float32)


def _degrade(sharp: np.ndarray, modality: str, seed: int, noise: PerModality, blur: PerModality,
             noise_seed: int | None, return_clean: bool, slicer: Any = None) -> Any:
    """Blur the sharp image to ``clean`` and add noise; ``slicer`` picks a 2D cut after the 3D PSF."""
    fwhm = _option(blur, modality, DEFAULT_BLUR, "blur")
    level = _option(noise, modality, DEFAULT_NOISE, "noise")
    clean = _blur(sharp, fwhm).astype(np.float32)
    if slicer is not None:
        sharp, clean = np.ascontiguousarray(sharp[slicer]), np.ascontiguousarray(clean[slicer])
    nseed = seed if noise_seed is None else _check_seed(noise_seed, "noise_seed")
    image = _add_noise(clean, modality, level, fwhm, np.random.default_rng([nseed, _MODALITY_ID[modality], 4]))
    image = image.astype(np.float32)
    return (image, clean, sharp) if return_clean else image


def pseudo_colour(image: np.ndarray, colormap: str = "hot", *, vmin: float | None = None,
                  vmax: float | None = None) -> np.ndarray:
    """Map a grey image to uint8 RGB, as PET/SPECT are usually shown.

    Uses matplotlib's colormaps when matplotlib is importable; otherwise only
    "hot" (built-in LUT) and "gray" are available.

    :param image: 2D (or nD) real image.
    :param colormap: colormap name, e.g. "hot", "jet", "inferno".
    :param vmin: value mapped to the low end; None -> image minimum.
    :param vmax: value mapped to the high end; None -> image maximum.
    :return: ``uint8`` array of shape ``image.shape + (3,)``.
    """
    image = np.asarray(image, dtype=np.float64)
    finite = image[np.isfinite(image)]
    lo = float(finite.min()) if vmin is None and finite.size else float(vmin or 0.0)
    hi = float(finite.max()) if vmax is None and finite.size else float(vmax if vmax is not None else 1.0)
    x = np.clip(np.nan_to_num((image - lo) / (hi - lo if hi > lo else 1.0)), 0, 1)
    try:
        import matplotlib

        try:
            cmap = matplotlib.colormaps[colormap]
        except KeyError:
            raise InputError(f"unknown colormap {colormap!r}") from None
        rgb = cmap(x)[..., :3]
    except ImportError:
        if colormap == "hot":  # matplotlib's 'hot': red, then green, then blue ramps
            rgb = np.stack([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], -1)
        elif colormap in ("gray", "grey"):
            rgb = np.stack([x] * 3, -1)
        else:
            raise InputError(f"colormap {colormap!r} needs matplotlib; without it only 'hot' and 'gray'") from None
    return np.round(rgb * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- phantoms
def _check_modalities(modalities: Sequence[str]) -> list[str]:
    if isinstance(modalities, str):
        raise InputError("modalities must be a sequence of names, not one string")
    names = [_check_modality(m) for m in modalities]
    if len(names) < 2 or len(set(names)) != len(names):
        raise InputError(f"need at least 2 distinct modalities, got {list(modalities)}")
    return names


def make_pair(shape: Sequence[int], modalities: Sequence[str] = ("CT", "MRI_T1"), seed: int = 0, *,
              noise: PerModality = None, blur: PerModality = None, spacing: Sequence[float] | None = None,
              noise_seed: int | None = None, **label_options: Any) -> Phantom:
    """Draw one anatomy and render it in two or more co-registered modalities.

    :param shape: ``(H, W)`` or ``(D, H, W)``, every size >= 32.
    :param modalities: two or more distinct names from :data:`MODALITIES`.
    :param seed: non-negative integer for anatomy and renderings.
    :param noise: one level for all, or a modality -> level mapping; None -> defaults.
    :param blur: one PSF FWHM (px) for all, or a mapping; None -> defaults.
    :param spacing: pixel size in mm per axis; None -> 1 mm.
    :param noise_seed: seed of the noise only; None -> ``seed``.
    :param label_options: passed to :func:`head_labels` (``lesions``, ``n_tumours``, ...).
    :return: a :class:`Phantom`.
    """
    names = _check_modalities(modalities)
    labels = head_labels(shape, seed, **label_options)
    spacing = _spacing(spacing, labels.ndim)
    images, clean, sharp = {}, {}, {}
    for name in names:
        images[name], clean[name], sharp[name] = render(
            labels, name, seed, noise=_option(noise, name, DEFAULT_NOISE, "noise"),
            blur=_option(blur, name, DEFAULT_BLUR, "blur"), noise_seed=noise_seed, return_clean=True)
    return Phantom(labels, images, clean, int(seed), spacing, sharp)


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(np.isfinite(s) and s > 0 for s in values):
        raise InputError(f"spacing must be {ndim} positive numbers, got {spacing!r}")
    return values


def mni152_slices(modalities: Sequence[str] = ("MRI_T1", "CT", "PET"), seed: int = 0, *,
                  plane: str = "axial", index: int | None = None, volume: bool = False,
                  resolution: int = 2, noise: PerModality = None, blur: PerModality = None,
                  noise_seed: int | None = None) -> Phantom:
    """Registered multimodal images derived from the MNI152 template bundled in nilearn.

    Uses ``nilearn.datasets.load_mni152_template``, ``load_mni152_gm_template``
    and ``load_mni152_wm_template``, which read the three files shipped in the
    nilearn wheel (``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``,
    1 mm, 197 x 233 x 189, uint8, ~1.6-2 MB each; ICBM152 2009a, skull-stripped)
    and resample them locally: nothing is downloaded. The wheel carries no
    licence file for these images (nilearn's own description page lists the
    licence as "unknown"); the upstream MNI ICBM152 2009 licence reads:
    "Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre,
    Montreal Neurological Institute, McGill University. Permission to use,
    copy, modify, and distribute this software and its documentation for any
    purpose and without fee is hereby granted, provided that the above
    copyright notice appear in all copies. The authors and McGill University
    make no representations about the suitability of this software for any
    purpose. It is provided "as is" without express or implied warranty."

    The template has no skull, so scalp and skull are synthesised as shells
    around the (smoothed) brain mask with seeded thicknesses. Images: MRI_T1 is
    the template itself inside the brain (scaled so WM matches the T1 table);
    every other modality (pseudo-CT, pseudo-PET, ...) mixes the table means by
    the GM/WM/CSF probabilities. The PSF is applied in 3D before slicing.
    Labels are the argmax of the tissue maps (no deep-grey or lesion labels).

    :param modalities: two or more names from :data:`MODALITIES`.
    :param seed: seed of shell thicknesses, mean perturbation, texture and noise.
    :param plane: "axial", "coronal" or "sagittal".
    :param index: slice index in the reoriented ``(D, H, W)`` volume; None -> through the ventricles.
    :param volume: return the whole 3D volume instead of one slice.
    :param resolution: voxel size in mm (nilearn resamples the 1 mm template).
    :param noise: as in :func:`make_pair`.
    :param blur: PSF FWHM in pixels, as in :func:`make_pair`; None -> :data:`DEFAULT_BLUR` read as mm.
    :param noise_seed: seed of the noise only; None -> ``seed``.
    :return: a :class:`Phantom`, 2D ``(H, W)`` unless ``volume``.
    :raises MissingDependencyError: (an ImportError and InputError) if nilearn is not installed.
    """
    try:
        from nilearn import datasets
    except ImportError:
        raise MissingDependencyError("mni152_slices needs the optional package nilearn "
                                     "(pip install nilearn); the synthetic phantoms do not") from None
    names = _check_modalities(modalities)
    seed = _check_seed(seed)
    axes = {"axial": 0, "coronal": 1, "sagittal": 2}
    if plane not in axes:
        raise InputError(f"plane must be one of {', '.join(axes)}, got {plane!r}")
    res = int(resolution)
    if res < 1 or res > 4:
        raise InputError(f"resolution must be 1-4 mm, got {resolution!r}")

    loaded = [datasets.load_mni152_template(resolution=res), datasets.load_mni152_gm_template(resolution=res),
              datasets.load_mni152_wm_template(resolution=res)]
    # nilearn arrays are (x=L->R, y=P->A, z=I->S); reorient to (S->I, A->P, L->R).
    t1, gm, wm = (np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)[::-1, ::-1] for img in loaded)
    brain = ndimage.binary_fill_holes(ndimage.gaussian_filter((t1 > 0.05).astype(np.float32), 1.0) > 0.5)
    rng = np.random.default_rng([seed, 0xB5])
    outside = ndimage.distance_transform_edt(~brain) * res  # mm from the brain surface
    csf_t, skull_t, scalp_t = rng.uniform(1.5, 3.0), rng.uniform(5.0, 8.0), rng.uniform(4.0, 7.0)
    prob = {_T.CSF: np.where(brain, np.clip(1 - gm - wm, 0, 1), (outside <= csf_t).astype(np.float32)),
            _T.GREY_MATTER: np.where(brain, gm, 0), _T.WHITE_MATTER: np.where(brain, wm, 0),
            _T.SKULL: ((outside > csf_t) & (outside <= csf_t + skull_t)).astype(np.float32),
            _T.SCALP: ((outside > csf_t + skull_t) & (outside <= csf_t + skull_t + scalp_t)).astype(np.float32)}
    order = list(prob)
    stack = np.stack([prob[t] for t in order])
    head = stack.sum(0) > 0
    labels = np.where(head, np.asarray(order, dtype=np.uint8)[stack.argmax(0)], 0).astype(np.uint8)

    if volume:
        slicer = None
    else:
        if index is None:  # default cut: MNI (x, y, z) = (0, -18, +12) mm, through ventricles and thalami
            inv = np.linalg.inv(loaded[0].affine) @ np.array([0.0, -18.0, 12.0, 1.0])
            xyz = np.round(inv[:3]).astype(int)
            index = [t1.shape[0] - 1 - xyz[2], t1.shape[1] - 1 - xyz[1], xyz[0]][axes[plane]]
        if not 0 <= int(index) < t1.shape[axes[plane]]:
            raise InputError(f"index {index} outside 0..{t1.shape[axes[plane]] - 1} for the {plane} plane")
        slicer = tuple(int(index) if a == axes[plane] else slice(None) for a in range(3))

    images, clean, sharp = {}, {}, {}
    for name in names:
        means = _perturbed_means(name, seed, 0.1)
        base = means[_T.BACKGROUND] * (1 - np.clip(stack.sum(0), 0, 1))
        for t in order:
            base = base + means[t] * prob[t]
        if name == "MRI_T1":  # real T1 contrast inside the brain, scaled so WM matches the table
            ref = float(np.median(t1[wm > 0.9])) if (wm > 0.9).any() else float(t1.max())
            base = np.where(brain, t1 * (means[_T.WHITE_MATTER] / max(ref, 1e-6)), base)
        tex, bias = DEFAULT_TEXTURE[name], DEFAULT_BIAS[name]
        sharp_vol = _apply_fields(base.astype(np.float32), head, name, seed, tex, bias)
        # Default PSFs are in mm (the synthetic phantoms use 1 mm pixels): convert to pixels.
        fwhm = _option(blur, name, {name: DEFAULT_BLUR[name] / res}, "blur")
        images[name], clean[name], sharp[name] = _degrade(sharp_vol, name, seed, noise, fwhm, noise_seed,
                                                          True, slicer)
    labels = labels if slicer is None else np.ascontiguousarray(labels[slicer])
    return Phantom(labels, images, clean, seed, (float(res),) * labels.ndim, sharp)
