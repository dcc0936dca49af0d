"""Tests of the user-facing fusion API (MedFusionLib.fusion), the training targets and recipes, and the CLI."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
import torch

from MedFusionLib.cli import main
from MedFusionLib.data.targets import phantom_cases, saliency_blend
from MedFusionLib.engine.model import FusionModel
from MedFusionLib.errors import InputError
from MedFusionLib.fusion import (
    DEFAULT_MODEL_PATH,
    FusionCancelled,
    fuse,
    fuse_volume,
    load_method,
    to_unit_range,
)
from MedFusionLib.io import LoadedImage, read_image, write_image
from MedFusionLib.recipes import recipe, train_recipe

RNG = np.random.default_rng(7)


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def pair() -> list[np.ndarray]:
    case = phantom_cases(1, (64, 72), [("CT", "MRI_T1")], seed=5)[0]
    return [np.rint(x * 255).astype(np.uint8) for x in case.inputs]


# ------------------------------------------------------------------ standardisation


def test_to_unit_range_rules():
    assert np.allclose(to_unit_range(np.array([[0, 255]], np.uint8)), [[0.0, 1.0]])
    assert np.allclose(to_unit_range(np.array([[0.2, 0.7]])), [[0.2, 0.7]])
    ct = np.array([[-1000.0, 40.0, 80.0, 3000.0]])
    assert np.allclose(to_unit_range(ct, "CT"), [[0.0, 0.5, 1.0, 1.0]])  # brain window 40 +- 40 HU
    wide = to_unit_range(np.linspace(-50, 5000, 1000).reshape(10, 100))
    assert wide.min() == 0.0 and wide.max() == 1.0 and wide.dtype == np.float32
    with pytest.raises(InputError, match="NaN"):
        to_unit_range(np.array([[np.nan, 1.0]]))
    with pytest.raises(InputError, match="empty"):
        to_unit_range(np.zeros((0, 3)))


# ------------------------------------------------------------------ 2D fusion


@pytest.mark.parametrize("method", ["average", "maximum", "laplacian", "guided_filter", "wavelet"])
def test_fuse_with_baselines(pair, method):
    before = [digest(x) for x in pair]
    result = fuse(pair, method=method)
    assert result.image.shape == pair[0].shape and result.image.dtype == np.float32
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0
    assert result.colour is None and result.seconds > 0 and result.method == method
    assert [digest(x) for x in pair] == before


def test_fuse_average_is_the_mean_of_the_standardised_inputs(pair):
    result = fuse(pair, method="average")
    assert np.allclose(result.image, (pair[0] / 255.0 + pair[1] / 255.0) / 2, atol=1e-6)


def test_default_model_is_shipped_and_fuses_any_number_of_inputs(pair):
    assert DEFAULT_MODEL_PATH.is_file()
    model = load_method("default")
    assert isinstance(model, FusionModel) and model.family == "cnn"
    two = fuse(pair).image
    three = fuse([*pair, pair[0]]).image  # one shared-weight model handles K = 3
    assert two.shape == three.shape == pair[0].shape
    assert np.all(np.isfinite(two)) and np.all(np.isfinite(three))
    # fusing an image with itself returns it (the weights are a convex combination)
    same = fuse([pair[0], pair[0]]).image
    assert np.allclose(same, pair[0] / 255.0, atol=1e-4)
    blocks = fuse(pair, block_size=16).image
    assert blocks.shape == pair[0].shape and not np.allclose(blocks, two, atol=1e-6)


def test_colour_input_is_fused_on_luminance(pair):
    pet = np.stack([pair[1], pair[1] // 2, np.zeros_like(pair[1])], axis=-1)
    result = fuse([pair[0], pet], method="maximum")
    assert result.colour is not None and result.colour.shape == (*pair[0].shape, 3)
    luminance = (0.299 * pet[..., 0] + 0.587 * pet[..., 1]) / 255.0
    assert np.allclose(result.image, np.maximum(pair[0] / 255.0, luminance), atol=1e-5)


def test_fuse_errors(pair):
    with pytest.raises(InputError, match="at least 2"):
        fuse([pair[0]], method="average")
    with pytest.raises(InputError, match="shape"):
        fuse([pair[0], pair[1][:10]], method="average")
    with pytest.raises(InputError, match="NaN"):
        fuse([pair[0] / 255.0, np.full(pair[0].shape, np.nan)], method="average")
    with pytest.raises(InputError, match="2D image"):
        fuse([np.zeros((4, 4, 4, 4)), np.zeros((4, 4, 4, 4))], method="average")
    with pytest.raises(InputError, match="not a model file"):
        fuse(pair, method="no_such_method")
    with pytest.raises(InputError, match="power of two"):
        fuse(pair, block_size=12)
    dbm = FusionModel.create("dbm", 3, 8, layer_sizes=(8,))
    with pytest.raises(InputError, match="fuses 3 images"):
        fuse(pair, method=dbm)


# ------------------------------------------------------------------ volumes


def oblique_volume(array: np.ndarray) -> LoadedImage:
    angle = np.deg2rad(20)
    direction = (np.cos(angle), 0.0, np.sin(angle), 0.0, 1.0, 0.0, -np.sin(angle), 0.0, np.cos(angle))
    return LoadedImage.from_array(array, spacing=(0.7, 0.9, 2.5), origin=(10.0, -20.0, 33.0), direction=direction)


@pytest.fixture(scope="module")
def volumes() -> list[LoadedImage]:
    a = RNG.normal(100, 20, (12, 24, 20)).astype(np.float32)
    b = RNG.normal(50, 10, (12, 24, 20)).astype(np.float32)
    return [oblique_volume(a), oblique_volume(b)]


def test_fuse_volume_keeps_geometry_and_matches_slicewise_fusion(volumes):
    before = [digest(v.array) for v in volumes]
    fused = fuse_volume(volumes, method="average", axis=0).image
    assert fused.array.shape == volumes[0].array.shape and fused.array.dtype == np.float32
    assert (fused.spacing, fused.origin, fused.direction) == (volumes[0].spacing, volumes[0].origin, volumes[0].direction)
    expected = (to_unit_range(volumes[0].array) + to_unit_range(volumes[1].array)) / 2
    assert np.allclose(fused.array, expected, atol=1e-6)
    for axis in (1, 2):  # a pointwise method gives the same volume whatever the slicing axis
        assert np.allclose(fuse_volume(volumes, method="average", axis=axis).array, fused.array, atol=1e-6)
    assert [digest(v.array) for v in volumes] == before


def test_fuse_volume_with_the_model_is_independent_of_batch_size(volumes):
    one = fuse_volume(volumes, batch_size=1).array
    many = fuse_volume(volumes, batch_size=7).array
    assert np.allclose(one, many, atol=1e-6)


def test_fuse_volume_progress_cancel_and_errors(volumes):
    calls = []
    fuse_volume(volumes, method="average", batch_size=5, progress=lambda f, m: calls.append(f))
    assert calls == pytest.approx([5 / 12, 10 / 12, 1.0])
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(FusionCancelled):
        fuse_volume(volumes, cancel=cancel)
    moved = LoadedImage(volumes[1].array, volumes[1].spacing, (0.0, 0.0, 0.0), volumes[1].direction)
    with pytest.raises(InputError, match="origin, spacing or direction"):
        fuse_volume([volumes[0], moved], method="average")
    with pytest.raises(InputError, match="shape"):
        fuse_volume([volumes[0], oblique_volume(volumes[1].array[:5])], method="average")
    with pytest.raises(InputError, match="axis"):
        fuse_volume(volumes, method="average", axis=3)


# ------------------------------------------------------------------ targets and recipes


def test_saliency_blend_identities():
    image = RNG.random((40, 48))
    assert np.allclose(saliency_blend([image, image]), image, atol=1e-12)
    flat = np.full_like(image, 0.3)
    # a flat input has no saliency anywhere: the target is the structured input
    assert np.allclose(saliency_blend([image, flat]), image, atol=1e-9)
    a, b = RNG.random((40, 48)), RNG.random((40, 48))
    assert np.allclose(saliency_blend([a, b]), saliency_blend([b, a]))
    # Never an intensity outside what some input shows at that pixel: a bright square beside
    # fine stripes makes the unclamped pyramid blend overshoot (to 1.23 here).
    yy, xx = np.mgrid[:64, :64]
    square = np.where((abs(yy - 32) < 12) & (abs(xx - 32) < 12), 1.0, 0.0)
    stripes = 0.5 + 0.1 * np.sin(xx / 1.5)
    fused = saliency_blend([square, stripes])
    assert (fused >= np.minimum(square, stripes)).all() and (fused <= np.maximum(square, stripes)).all()
    assert fused.max() == 1.0  # the square still reaches full brightness


def test_phantom_cases_are_deterministic_and_in_range():
    first = phantom_cases(1, (48, 48), [("CT", "MRI_T1")], seed=3)
    again = phantom_cases(1, (48, 48), [("CT", "MRI_T1")], seed=3)
    assert np.array_equal(first[0].target, again[0].target)
    assert 0.0 <= first[0].target.min() and first[0].target.max() <= 1.0
    with pytest.raises(InputError, match="count_per_pair"):
        phantom_cases(0)


def test_smoke_recipe_trains_and_saves(tmp_path):
    path = tmp_path / "smoke.pt"
    model, history = train_recipe("smoke", path)
    assert path.is_file() and (tmp_path / "smoke.pt.history.json").is_file()
    loaded = FusionModel.load(path)
    assert loaded.info.training["recipe"] == "smoke"
    assert loaded.info.training["targets"].startswith("MedFusionLib.data.targets.saliency_blend")
    assert len(history.train_loss) == recipe("smoke")["training"].iterations
    with pytest.raises(InputError, match="unknown"):
        recipe("nope")


# ------------------------------------------------------------------ CLI


def test_cli_fuse_evaluate_and_errors(tmp_path, pair, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    write_image(pair[0], a)
    write_image(pair[1], b)
    before = [a.read_bytes(), b.read_bytes()]
    out = tmp_path / "fused.png"
    assert main(["fuse", str(a), str(b), "-o", str(out), "--method", "laplacian", "-q"]) == 0
    assert read_image(out).array.shape == pair[0].shape
    assert [a.read_bytes(), b.read_bytes()] == before
    # refuses to overwrite without --overwrite, and never writes over an input
    assert main(["fuse", str(a), str(b), "-o", str(out), "--method", "average", "-q"]) == 2
    assert main(["fuse", str(a), str(b), "-o", str(a), "--method", "average", "--overwrite", "-q"]) == 2
    assert a.read_bytes() == before[0]
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("medfusion: error:") for line in err)
    assert main(["fuse", str(a), str(tmp_path / "missing.png"), "-o", str(tmp_path / "x.png")]) == 2
    csv = tmp_path / "metrics.csv"
    assert main(["evaluate", str(out), str(a), str(b), "-o", str(csv)]) == 0
    header = csv.read_text().splitlines()[0].split(",")
    assert header[0] == "image" and "QABF" in header and "RMSE" not in header
    with pytest.raises(InputError):
        main(["--debug", "fuse", str(a), str(b), "-o", str(out), "--method", "average"])


def test_cli_fuses_volumes_with_geometry(tmp_path, volumes):
    paths = []
    for index, volume in enumerate(volumes):
        paths.append(write_image(volume, tmp_path / f"v{index}.nii.gz"))
    out = tmp_path / "fused.nii.gz"
    assert main(["fuse", *map(str, paths), "-o", str(out), "-q"]) == 0
    fused = read_image(out)
    assert fused.geometry_matches(read_image(paths[0]))
    # evaluate scores volumes slice by slice: the mean row first, then one row per slice with signal
    csv = tmp_path / "volume_metrics.csv"
    assert main(["evaluate", str(out), *map(str, paths), "-o", str(csv)]) == 0
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    assert header[0] == "image" and "QABF" in header and "QABF_LIU" not in header
    assert lines[1].startswith(f"fused.nii.gz (mean of {len(lines) - 2} slices)")
    assert all(line.startswith("fused.nii.gz slice K=") for line in lines[2:]) and len(lines) > 3
    from MedFusionLib.metrics import evaluate_volume

    expected = evaluate_volume(fused.array, [v.array for v in volumes]).metrics
    column = header.index("QABF")
    assert float(lines[1].split(",")[column]) == pytest.approx(expected["QABF"], rel=1e-5)
    # a 2D image next to volumes is one clear error
    flat = write_image(LoadedImage.from_array(np.zeros((8, 8), np.float32)), tmp_path / "flat.nii.gz")
    assert main(["evaluate", str(out), str(paths[0]), str(flat)]) == 2


def test_cli_demo_runs(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "MedFusion (default model)" in printed and "QABF" in printed
    assert {p.name for p in tmp_path.iterdir()} >= {"fused_ct_mri.png", "fused_mri_pet_colour.png", "fused_volume.nii.gz"}


def test_cli_train_smoke(tmp_path):
    path = tmp_path / "m.pt"
    assert main(["train", "--recipe", "smoke", "-o", str(path), "-q", "--device", "cpu"]) == 0
    assert FusionModel.load(path).family == "cnn"
    assert torch.is_grad_enabled()


def test_training_triplets_from_a_folder_and_cli_training_on_them(tmp_path, pair):
    from MedFusionLib.batch import load_training_triplets

    for case in ("case1", "case2", "case3"):
        folder = tmp_path / "data" / case
        folder.mkdir(parents=True)
        write_image(pair[0], folder / "input_1.png")
        write_image(pair[1], folder / "input_2.png")
        write_image(np.maximum(pair[0], pair[1]), folder / "target.png")
    dataset = load_training_triplets(tmp_path / "data")
    assert len(dataset) == 3 and dataset.n_inputs == 2
    assert np.allclose(dataset.triplets[0].target, np.maximum(pair[0], pair[1]) / 255.0)
    (tmp_path / "data" / "case3" / "target.png").unlink()
    with pytest.raises(InputError, match="needs a target"):
        load_training_triplets(tmp_path / "data")
    (tmp_path / "data" / "case3" / "input_1.png").unlink()
    (tmp_path / "data" / "case3" / "input_2.png").unlink()
    model_path = tmp_path / "own.pt"
    assert main(["train", "--recipe", "smoke", "--data", str(tmp_path / "data"), "-o", str(model_path), "-q"]) == 0
    assert FusionModel.load(model_path).info.training["data"] == "user triplets"


def test_constant_and_odd_channel_inputs(pair):
    flat = np.full(pair[0].shape, 128, np.uint8)
    fused = fuse([flat, flat]).image
    assert np.allclose(fused, 128 / 255.0, atol=1e-5)  # nothing to add to a constant
    assert np.all(np.isfinite(fuse([pair[0], flat]).image))
    with pytest.raises(InputError, match="2D image"):
        fuse([np.zeros((16, 16, 2)), np.zeros((16, 16, 2))], method="average")


def test_cli_train_with_tuning(tmp_path):
    pytest.importorskip("optuna")
    path = tmp_path / "tuned.pt"
    assert main(["train", "--recipe", "smoke", "--tune", "2", "--tune-iterations", "10", "-o", str(path), "-q"]) == 0
    import json

    tuning = json.loads((tmp_path / "tuned.pt.tuning.json").read_text())
    assert len(tuning["trials"]) == 2
    model = FusionModel.load(path)
    assert model.block_size == tuning["best_params"]["block_size"]
    assert "--tune 2" in model.info.training["command"]


def test_baselines_refuse_block_options_and_bad_devices(pair, volumes):
    with pytest.raises(InputError, match="blocks apply to learned models"):
        fuse(pair, method="laplacian", block_size=8)
    with pytest.raises(InputError, match="device"):
        fuse(pair, method="laplacian", device="quantum")
    with pytest.raises(InputError, match="blocks apply to learned models"):
        fuse_volume(volumes, method="average", block_size=8)
    grey_volume = LoadedImage.from_array(np.zeros((16, 16, 3), np.float32))
    with pytest.raises(InputError, match="2D image"):
        fuse([grey_volume, grey_volume], method="average")
