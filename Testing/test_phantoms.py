"""Tests of MedFusionLib.data.phantoms: anatomy, modality contrast, noise, determinism, speed."""

from __future__ import annotations

import socket
import sys
import time

import numpy as np
import pytest
from scipy import ndimage

from MedFusionLib.data import (
    DEFAULT_NOISE,
    LESION_TISSUES,
    MODALITIES,
    NORMAL_TISSUES,
    MissingDependencyError,
    Phantom,
    Tissue,
    head_labels,
    make_pair,
    mni152_slices,
    pseudo_colour,
    render,
)
from MedFusionLib.errors import InputError

SHAPES = [(32, 32), (64, 48), (48, 96), (256, 256), (32, 40, 36)]


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_pair((192, 160), MODALITIES, seed=7)


def _means(image: np.ndarray, labels: np.ndarray) -> dict[Tissue, float]:
    return {t: float(image[labels == t].mean()) for t in Tissue if (labels == t).any()}


def _mean_gradient(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean gradient magnitude inside ``mask``, relative to the mean signal (scale-free)."""
    grad = np.sqrt(sum(g**2 for g in np.gradient(image.astype(np.float64))))
    return float(grad[mask].mean() / image[mask].mean())


# ----------------------------------------------------------------------------- anatomy
def test_same_seed_same_arrays() -> None:
    a, b = make_pair((64, 80), ("CT", "MRI_T1", "PET"), seed=11), make_pair((64, 80), ("CT", "MRI_T1", "PET"), seed=11)
    assert np.array_equal(a.labels, b.labels)
    for name in a.images:
        assert np.array_equal(a.images[name], b.images[name])
        assert np.array_equal(a.clean[name], b.clean[name])


def test_different_seed_different_anatomy() -> None:
    a, b = head_labels((128, 128), seed=1), head_labels((128, 128), seed=2)
    head = (a > 0) | (b > 0)
    # Not just a shifted noise pattern: a sizeable part of the head changes tissue.
    assert (a != b)[head].mean() > 0.05
    assert abs(int((a == Tissue.SKULL).sum()) - int((b == Tissue.SKULL).sum())) > 0


@pytest.mark.parametrize("shape", SHAPES)
def test_every_default_tissue_present(shape: tuple[int, ...]) -> None:
    for seed in range(3):
        labels = head_labels(shape, seed)
        assert labels.shape == shape
        assert np.issubdtype(labels.dtype, np.integer)
        assert set(np.unique(labels).tolist()) == {int(t) for t in Tissue}, (shape, seed)


def test_healthy_head_and_explicit_lesion_counts() -> None:
    healthy = head_labels((96, 96), seed=4, lesions=False)
    assert set(np.unique(healthy).tolist()) == {int(t) for t in NORMAL_TISSUES}
    calc_only = head_labels((128, 128), seed=4, n_tumours=0, n_haemorrhages=0, n_calcifications=3)
    present = set(np.unique(calc_only).tolist())
    assert not present & {int(Tissue.TUMOUR), int(Tissue.NECROSIS), int(Tissue.OEDEMA), int(Tissue.HAEMORRHAGE)}
    assert ndimage.label(calc_only == Tissue.CALCIFICATION)[1] == 3
    assert set(LESION_TISSUES) | set(NORMAL_TISSUES) == set(Tissue)


def test_anatomy_is_layered() -> None:
    labels = head_labels((160, 160), seed=3)
    # Skull encloses the brain: no brain tissue touches the scalp or the air.
    brain = np.isin(labels, [Tissue.GREY_MATTER, Tissue.WHITE_MATTER, Tissue.DEEP_GREY])
    outer = np.isin(labels, [Tissue.SCALP, Tissue.BACKGROUND])
    assert not (ndimage.binary_dilation(brain) & outer).any()
    assert labels[0, 0] == Tissue.BACKGROUND and labels[80, 80] != Tissue.BACKGROUND


@pytest.mark.parametrize("shape", [(31, 64), (64,), (32, 32, 32, 32), "abc"])
def test_bad_shape_rejected(shape: object) -> None:
    with pytest.raises(InputError):
        head_labels(shape, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 1.5, "x"])
def test_bad_seed_rejected(bad: object) -> None:
    with pytest.raises(InputError):
        head_labels((32, 32), bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("shape", [(48, 80), (32, 40, 36)])
def test_images_are_finite_float32(shape: tuple[int, ...]) -> None:
    ph = make_pair(shape, MODALITIES, seed=5)
    assert ph.spacing == (1.0,) * len(shape) and ph.modalities == MODALITIES
    for group in (ph.images, ph.clean, ph.sharp):
        for name, image in group.items():
            assert image.shape == shape and image.dtype == np.float32, name
            assert np.isfinite(image).all(), name
    for name in ("MRI_T1", "MRI_T2", "PET", "SPECT"):
        assert ph.images[name].min() >= 0, name


def test_ct_contrast(phantom: Phantom) -> None:
    m = _means(phantom.clean["CT"], phantom.labels)
    s = _means(phantom.sharp["CT"], phantom.labels)
    assert m[Tissue.SKULL] > 500
    assert m[Tissue.SKULL] > max(m[Tissue.GREY_MATTER], m[Tissue.WHITE_MATTER], m[Tissue.SCALP]) + 400
    assert s[Tissue.BACKGROUND] == pytest.approx(-1000, abs=1)
    assert 5 <= s[Tissue.CSF] < s[Tissue.WHITE_MATTER] < s[Tissue.GREY_MATTER] <= 50
    assert s[Tissue.HAEMORRHAGE] > 55 and s[Tissue.CALCIFICATION] > 300


def test_mri_contrast(phantom: Phantom) -> None:
    t1 = _means(phantom.images["MRI_T1"], phantom.labels)
    t2 = _means(phantom.images["MRI_T2"], phantom.labels)
    assert t1[Tissue.WHITE_MATTER] > t1[Tissue.GREY_MATTER] > t1[Tissue.CSF]
    assert t1[Tissue.SCALP] > t1[Tissue.WHITE_MATTER] and t1[Tissue.SKULL] < t1[Tissue.CSF]
    assert t2[Tissue.CSF] > t2[Tissue.GREY_MATTER] > t2[Tissue.WHITE_MATTER]
    assert t2[Tissue.OEDEMA] > t2[Tissue.WHITE_MATTER]


def test_nuclear_contrast(phantom: Phantom) -> None:
    for name, ratio in (("PET", 1.5), ("SPECT", 1.2)):  # SPECT's wide PSF mixes the thin cortex with WM
        m = _means(phantom.images[name], phantom.labels)
        assert m[Tissue.GREY_MATTER] > ratio * m[Tissue.WHITE_MATTER], name
        assert m[Tissue.BACKGROUND] < 0.1 * m[Tissue.GREY_MATTER], name
    sharp = _means(phantom.sharp["PET"], phantom.labels)
    assert sharp[Tissue.TUMOUR] > sharp[Tissue.GREY_MATTER]
    assert max(sharp[Tissue.CSF], sharp[Tissue.SKULL]) < 0.1 * sharp[Tissue.GREY_MATTER]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrast_orders_hold_across_seeds(seed: int) -> None:
    ph = make_pair((96, 96), ("MRI_T1", "MRI_T2", "PET"), seed=seed, noise=0.0)
    t1, t2, pet = (_means(ph.sharp[n], ph.labels) for n in ("MRI_T1", "MRI_T2", "PET"))
    assert t1[Tissue.WHITE_MATTER] > t1[Tissue.GREY_MATTER] > t1[Tissue.CSF]
    assert t2[Tissue.CSF] > t2[Tissue.GREY_MATTER] > t2[Tissue.WHITE_MATTER]
    assert pet[Tissue.GREY_MATTER] > pet[Tissue.WHITE_MATTER]


def test_tissue_means_are_perturbed_per_seed() -> None:
    labels = head_labels((64, 64), 0)
    kw = dict(noise=0.0, blur=0.0, texture=0.0, bias=0.0)
    a, b = render(labels, "MRI_T1", 0, **kw), render(labels, "MRI_T1", 1, **kw)
    ratio = a[labels == Tissue.WHITE_MATTER][0] / b[labels == Tissue.WHITE_MATTER][0]
    assert ratio != 1.0 and 0.8 < ratio < 1.25
    exact = render(labels, "MRI_T1", 0, perturb=0.0, **kw)
    assert exact[labels == Tissue.WHITE_MATTER] == pytest.approx(650.0)


def test_spect_smoother_than_pet(phantom: Phantom) -> None:
    head = phantom.labels > Tissue.SKULL
    assert _mean_gradient(phantom.images["SPECT"], head) < 0.8 * _mean_gradient(phantom.images["PET"], head)
    # The PSF is really applied: the clean PET is much smoother than its sharp tissue map.
    assert _mean_gradient(phantom.clean["PET"], head) < 0.5 * _mean_gradient(phantom.sharp["PET"], head)


@pytest.mark.parametrize("modality,tissue", [("CT", Tissue.WHITE_MATTER), ("MRI_T1", Tissue.WHITE_MATTER),
                                             ("PET", Tissue.GREY_MATTER)])
def test_noise_scales_with_parameter(modality: str, tissue: Tissue) -> None:
    labels = head_labels((128, 128), 2)
    mask = ndimage.binary_erosion(labels == tissue, iterations=2) if modality != "PET" else labels == tissue
    stds = []
    for level in (0.02, 0.04):
        image, clean, _ = render(labels, modality, 2, noise=level, return_clean=True)
        stds.append(float((image - clean)[mask].std()))
    assert stds[1] / stds[0] == pytest.approx(2.0, rel=0.15)
    if modality == "CT":  # documented unit: fraction of 1000 HU
        assert stds[0] == pytest.approx(20.0, rel=0.15)


def test_clean_part_independent_of_noise() -> None:
    labels = head_labels((64, 64), 9)
    img1, clean1, sharp1 = render(labels, "MRI_T2", 3, noise_seed=1, return_clean=True)
    img2, clean2, sharp2 = render(labels, "MRI_T2", 3, noise_seed=2, return_clean=True)
    assert np.array_equal(clean1, clean2) and np.array_equal(sharp1, sharp2)
    assert not np.array_equal(img1, img2)
    quiet = render(labels, "MRI_T2", 3, noise=0.0)
    assert np.array_equal(quiet, clean1)
    # make_pair's noise_seed changes the images but neither the anatomy nor the clean images.
    a = make_pair((48, 48), ("CT", "PET"), seed=3, noise_seed=10)
    b = make_pair((48, 48), ("CT", "PET"), seed=3, noise_seed=11)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.clean["PET"], b.clean["PET"])
    assert not np.array_equal(a.images["PET"], b.images["PET"])


def test_default_noise_used_and_overridable() -> None:
    ph = make_pair((64, 64), ("CT", "MRI_T1"), seed=1, noise={"CT": 0.0}, blur=0.0)
    assert np.array_equal(ph.images["CT"], ph.clean["CT"])
    assert not np.array_equal(ph.images["MRI_T1"], ph.clean["MRI_T1"])
    assert np.array_equal(ph.clean["CT"], ph.sharp["CT"])  # blur=0: no PSF
    assert DEFAULT_NOISE["SPECT"] > DEFAULT_NOISE["CT"]


@pytest.mark.parametrize("kwargs", [dict(modality="XRAY"), dict(modality="CT", noise=-1.0),
                                    dict(modality="CT", blur=float("nan"))])
def test_bad_render_arguments(kwargs: dict) -> None:
    with pytest.raises(InputError):
        render(head_labels((32, 32), 0), seed=0, **kwargs)


def test_bad_labels_rejected() -> None:
    with pytest.raises(InputError):
        render(np.zeros((32, 32), np.float32), "CT")
    with pytest.raises(InputError):
        render(np.full((32, 32), 99), "CT")


@pytest.mark.parametrize("modalities", [("CT",), ("CT", "CT"), "CT", ("CT", "US")])
def test_bad_modalities_rejected(modalities: object) -> None:
    with pytest.raises(InputError):
        make_pair((32, 32), modalities)  # type: ignore[arg-type]


def test_spacing() -> None:
    assert make_pair((32, 48), spacing=(0.5, 0.8)).spacing == (0.5, 0.8)
    with pytest.raises(InputError):
        make_pair((32, 48), spacing=(1.0,))


# ----------------------------------------------------------------------------- colour
def test_pseudo_colour(phantom: Phantom) -> None:
    pet = phantom.images["PET"]
    rgb = pseudo_colour(pet, "hot")
    assert rgb.dtype == np.uint8 and rgb.shape == pet.shape + (3,)
    hottest, coldest = np.unravel_index(pet.argmax(), pet.shape), np.unravel_index(pet.argmin(), pet.shape)
    assert rgb[hottest].tolist() == [255, 255, 255]
    assert rgb[coldest].astype(int).sum() == rgb.astype(int).sum(-1).min() < 20
    assert not np.array_equal(pseudo_colour(pet, "jet"), rgb)
    with pytest.raises(InputError):
        pseudo_colour(pet, "no-such-map")


def test_pseudo_colour_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    ramp = np.linspace(0, 1, 256)[None, :]
    rgb = pseudo_colour(ramp, "hot")
    assert rgb.shape == (1, 256, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, -1].tolist() == [255, 255, 255]
    assert (np.diff(rgb[0].astype(int).sum(-1)) >= 0).all()  # brightness never decreases
    with pytest.raises(InputError):
        pseudo_colour(ramp, "jet")


# ----------------------------------------------------------------------------- speed
def _best_time(fn, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_speed_2d_pair() -> None:
    assert _best_time(lambda: make_pair((256, 256), ("CT", "MRI_T1"), seed=1), 3) < 0.5


def test_speed_3d_pair() -> None:
    assert _best_time(lambda: make_pair((64, 128, 128), ("CT", "MRI_T1"), seed=1), 1) < 5.0


# ----------------------------------------------------------------------------- MNI152
def test_mni152_without_nilearn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nilearn", None)
    with pytest.raises(MissingDependencyError, match="nilearn") as info:
        mni152_slices()
    assert isinstance(info.value, ImportError) and isinstance(info.value, InputError)


def test_mni152_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nilearn")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("mni152_slices tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    ph = mni152_slices(("MRI_T1", "CT", "PET"), seed=0)
    assert ph.labels.ndim == 2 and ph.spacing == (2.0, 2.0)
    assert all(im.shape == ph.labels.shape and im.dtype == np.float32 for im in ph.images.values())
    present = set(np.unique(ph.labels).tolist())
    assert {Tissue.SCALP, Tissue.SKULL, Tissue.CSF, Tissue.GREY_MATTER, Tissue.WHITE_MATTER} <= present
    t1, ct, pet = (_means(ph.clean[n], ph.labels) for n in ("MRI_T1", "CT", "PET"))
    assert t1[Tissue.WHITE_MATTER] > t1[Tissue.GREY_MATTER] > t1[Tissue.CSF]
    assert ct[Tissue.SKULL] > 500 and ct[Tissue.BACKGROUND] < -900
    assert pet[Tissue.GREY_MATTER] > pet[Tissue.WHITE_MATTER]
    vol = mni152_slices(("MRI_T1", "PET"), volume=True, resolution=4)
    assert vol.labels.ndim == 3 and vol.images["PET"].shape == vol.labels.shape
    with pytest.raises(InputError):
        mni152_slices(plane="oblique")
