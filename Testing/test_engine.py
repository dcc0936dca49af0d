"""Tests of the fusion networks, the model file format and training (MedFusionLib.engine)."""

from __future__ import annotations

import json
import pickle
import threading

import numpy as np
import pytest
import torch
from scipy import ndimage

from MedFusionLib.engine.devices import inference_context, resolve_device
from MedFusionLib.engine.model import FusionModel
from MedFusionLib.engine.networks import (
    BlockDBMNet,
    PyramidWeightCNN,
    collapse_pyramid,
    laplacian_pyramid,
    max_levels,
)
from MedFusionLib.engine.rbm import TrainingCancelled
from MedFusionLib.engine.training import Triplet, TripletDataset, TrainingConfig, fusion_loss, training_patch_size
from MedFusionLib.errors import InputError


def smooth_image(rng: np.random.Generator, shape=(72, 80), sigma=2.0) -> np.ndarray:
    image = ndimage.gaussian_filter(rng.random(shape), sigma)
    return ((image - image.min()) / (image.max() - image.min())).astype(np.float32)


@pytest.fixture(scope="module")
def dataset() -> TripletDataset:
    rng = np.random.default_rng(0)
    triplets = []
    for index in range(6):
        a, b = smooth_image(rng), smooth_image(rng)
        triplets.append(Triplet([a, b], np.maximum(a, b), f"toy {index}"))
    return TripletDataset(triplets)


# ------------------------------------------------------------------ networks


@pytest.mark.parametrize("shape", [(64, 64), (37, 53), (9, 130)])
def test_torch_pyramid_collapses_exactly(shape):
    x = torch.rand(2, 3, *shape, dtype=torch.float64)
    pyramid = laplacian_pyramid(x, max_levels(*shape))
    assert torch.allclose(collapse_pyramid(pyramid), x, atol=1e-12)


@pytest.mark.parametrize("shape", [(64, 64), (37, 53), (8, 8), (3, 5), (1, 1)])
def test_cnn_of_identical_inputs_is_the_input(shape):
    # Per-level weights sum to one, so fusing K copies of an image must return it.
    torch.manual_seed(1)
    network = PyramidWeightCNN(n_inputs=3).double().eval()
    image = torch.rand(1, 1, *shape, dtype=torch.float64)
    with torch.no_grad():
        fused = network(image.expand(1, 3, *shape).contiguous())
    assert fused.shape == (1, 1, *shape)
    assert torch.allclose(fused, image, atol=1e-10)


def test_cnn_output_is_finite_and_depends_on_the_inputs():
    torch.manual_seed(2)
    network = PyramidWeightCNN().eval()
    x = torch.rand(4, 2, 48, 40)
    with torch.no_grad():
        y = network(x)
    assert torch.isfinite(y).all()
    assert not torch.allclose(y, x[:, :1])  # not a copy of one input


def test_cnn_clamps_each_pixel_to_the_inputs_range():
    # A sharp bright square next to a dark one makes the pyramid blend overshoot; with the
    # clamp the output is the unclamped output clipped to [min_k x_k, max_k x_k] per pixel.
    torch.manual_seed(3)
    clamped = PyramidWeightCNN().double().eval()
    free = PyramidWeightCNN(clamp_to_inputs=False).double().eval()
    with torch.no_grad():
        for parameter in clamped.parameters():
            parameter.add_(torch.randn_like(parameter))
    free.load_state_dict(clamped.state_dict())
    x = torch.rand(2, 2, 64, 64, dtype=torch.float64) * 0.2
    x[:, 0, 16:40, 16:40] = 1.0
    with torch.no_grad():
        y, unclamped = clamped(x), free(x)
    low, high = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    assert ((unclamped < low - 1e-9) | (unclamped > high + 1e-9)).any()  # the case overshoots
    assert (y >= low).all() and (y <= high).all()
    assert torch.equal(y, torch.minimum(torch.maximum(unclamped, low), high))


def test_model_files_without_the_clamp_option_load_with_it_off(tmp_path):
    # Files written before ``clamp_to_inputs`` existed must fuse exactly as they did.
    path = FusionModel.create("cnn", 2, 8, seed=0).save(tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    assert '"clamp_to_inputs": true' in payload["info"]
    payload["info"] = payload["info"].replace(', "clamp_to_inputs": true', "")
    torch.save(payload, path)
    assert FusionModel.load(path).network.clamp_to_inputs is False
    assert FusionModel.create("cnn", 2, 8).network.clamp_to_inputs is True
    # the shipped model was trained with the clamp and must fuse with it
    from MedFusionLib.fusion import load_method

    assert load_method("default").network.clamp_to_inputs is True


def test_dbm_files_of_the_first_form_load_as_such_and_fuse_blocks(tmp_path):
    # DBM files written before the weights form existed have no "predicts": they predict fused blocks.
    first = FusionModel.create("dbm", 2, 8, layer_sizes=(16,), seed=0, predicts="values")
    path = first.save(tmp_path / "old_dbm.pt")
    payload = torch.load(path, weights_only=True)
    info = json.loads(payload["info"])
    del info["config"]["predicts"], info["config"]["levels"]
    payload["info"] = json.dumps(info)
    torch.save(payload, path)
    loaded = FusionModel.load(path)
    assert loaded.network.predicts == "values" and not loaded.network.has_contributions
    image = np.random.default_rng(0).random((24, 24)).astype(np.float32)
    np.testing.assert_array_equal(loaded.fuse([image, image[::-1]]), first.fuse([image, image[::-1]]))
    with pytest.raises(ValueError, match="predicts"):
        BlockDBMNet(predicts="pixels")


def test_dbm_of_the_first_form_starts_from_the_average():
    network = BlockDBMNet(n_inputs=2, block_size=4, layer_sizes=(16, 8), predicts="values")
    blocks = torch.rand(5, 2, 4, 4)
    assert torch.allclose(network(blocks), blocks.mean(dim=1, keepdim=True))
    assert not network.has_contributions


def _randomise_head(network: BlockDBMNet, seed: int = 0) -> None:
    """Give the (zero-initialised) head random weights, as fine-tuning would: block scores that differ."""
    generator = torch.Generator().manual_seed(seed)
    head = network.body[-1]
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 3.0)
        head.bias.copy_(torch.randn(head.bias.shape, generator=generator))


def test_weights_dbm_blends_its_inputs_and_scores_blocks_on_their_centres():
    """The DBM of the shipped recipe: block scores between block centres, a convex mix of its inputs."""
    network = BlockDBMNet(n_inputs=2, block_size=8, layer_sizes=(16, 8)).eval()
    assert network.predicts == "weights" and network.has_contributions
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((2, 2, 37, 50), dtype=np.float32))
    _randomise_head(network)
    with torch.no_grad():
        grid = network.block_scores(x)
        # Blocks of 8 at stride 4: one score set per 4 x 4 cell, (levels + 1) x K scores each.
        assert grid.shape == (2, (network.levels + 1) * 2, 10, 13)
        # Block (i, j) is the image's 8 x 8 window centred on pixel ((i + 1/2) 4, (j + 1/2) 4).
        window = x[:1, :, 4 * 3 + 2 - 4 : 4 * 3 + 2 + 4, 4 * 5 + 2 - 4 : 4 * 5 + 2 + 4].reshape(1, -1)
        torch.testing.assert_close(grid[0, :, 3, 5], network.body(window)[0])
        fused, shares = network.fuse_with_contributions(x)
        assert fused.shape == (2, 1, 37, 50)
        assert bool((fused >= x.amin(dim=1, keepdim=True) - 1e-6).all() and (fused <= x.amax(dim=1, keepdim=True) + 1e-6).all())
        torch.testing.assert_close(shares.sum(dim=1), torch.ones(2, 37, 50))
        same = torch.stack([x[:, 0], x[:, 0]], dim=1)  # equal inputs: the fusion gives them back
        torch.testing.assert_close(network(same), x[:, :1], atol=1e-5, rtol=0)
        tiny = torch.rand(1, 2, 5, 3)  # smaller than a block: mirrored up to one
        assert network(tiny).shape == (1, 1, 5, 3)


def test_weights_dbm_leaves_no_block_grid_even_with_scores_that_differ_block_to_block():
    """The scores are interpolated between block centres, so no step sits on a block border: the fused
    phantoms show no more block grid than the Laplacian pyramid's, whatever the head says (here: random)."""
    from MedFusionLib import fuse
    from MedFusionLib.data.targets import MODALITY_PAIRS, phantom_cases
    from MedFusionLib.metrics import block_grid_index

    model = FusionModel.create("dbm", 2, 8, layer_sizes=(32, 16), seed=0)
    _randomise_head(model.network)
    model.network.activity_power.data.zero_()  # the blocks' scores alone decide
    cases = phantom_cases(1, (96, 96), MODALITY_PAIRS[:3], seed=900)

    def grid(method) -> float:
        return float(np.mean([block_grid_index(fuse(list(c.inputs), method).image) for c in cases]))

    assert grid(model) <= grid("laplacian") + 0.03


# ------------------------------------------------------------------ model API


def test_create_validates_arguments():
    with pytest.raises(InputError, match="family"):
        FusionModel.create("gan")
    with pytest.raises(InputError, match="n_inputs"):
        FusionModel.create("cnn", n_inputs=1)
    with pytest.raises(InputError, match="power of two"):
        FusionModel.create("cnn", block_size=24)


def test_fuse_whole_image_and_blocks_agree_on_identical_inputs():
    model = FusionModel.create("cnn", 2, 16)
    image = np.random.default_rng(3).random((40, 52)).astype(np.float32)
    whole = model.fuse([image, image])
    blocks = model.fuse([image, image], block_size=16)
    assert np.allclose(whole, image, atol=1e-5) and np.allclose(blocks, image, atol=1e-5)
    with pytest.raises(InputError, match="block"):
        model.fuse([image, image], block_size=64)  # larger than the image
    assert model.fuse_tensor(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)  # the CNN takes any K
    with pytest.raises(InputError, match="fuses 2 images"):
        model.fuse_tensor(torch.rand(1, 1, 16, 16))
    dbm = FusionModel.create("dbm", 2, 8, layer_sizes=(16,))
    with pytest.raises(InputError, match="fuses 2 images"):
        dbm.fuse_tensor(torch.rand(1, 3, 16, 16))


def test_dbm_refuses_another_block_size():
    model = FusionModel.create("dbm", 2, 8, layer_sizes=(16,))
    image = np.zeros((16, 16), np.float32)
    with pytest.raises(InputError, match="trained on 8x8"):
        model.fuse([image, image], block_size=4)
    assert model.fuse([image, image]).shape == (16, 16)


@pytest.mark.parametrize("family, kwargs", [("cnn", {}), ("dbm", {"layer_sizes": (32, 16)})])
def test_save_and_load_round_trip(tmp_path, family, kwargs):
    model = FusionModel.create(family, 2, 8, **kwargs)
    with torch.no_grad():
        for parameter in model.network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.info.modalities = ["CT", "MRI"]
    path = model.save(tmp_path / "model.pt")
    loaded = FusionModel.load(path)
    assert loaded.info == model.info
    images = [np.random.default_rng(i).random((24, 24)).astype(np.float32) for i in range(2)]
    assert np.array_equal(loaded.fuse(images), model.fuse(images))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left


def test_hostile_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "owned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "medfusion-model", "payload": Exploit()}, handle)
    with pytest.raises(InputError, match="not a readable MedFusion model"):
        FusionModel.load(path)
    assert not marker.exists()


def test_bad_model_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        FusionModel.load(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    FusionModel.create("cnn", 2, 8).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(InputError, match="not a readable"):
        FusionModel.load(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(InputError, match="not a MedFusion model"):
        FusionModel.load(foreign)
    future = tmp_path / "future.pt"
    payload = torch.load(FusionModel.create("cnn", 2, 8).save(tmp_path / "ok.pt"), weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, future)
    with pytest.raises(InputError, match="format version 99"):
        FusionModel.load(future)
    wrong_family = tmp_path / "wrong.pt"
    payload["format_version"] = 1
    payload["info"] = payload["info"].replace('"family": "cnn"', '"family": "dbm"')
    torch.save(payload, wrong_family)
    with pytest.raises(InputError, match="inconsistent"):
        FusionModel.load(wrong_family)


def test_devices():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="not a device"):
        resolve_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_and_cpu_agree():
    model = FusionModel.create("cnn", 2, 16)
    images = [np.random.default_rng(i).random((64, 64)).astype(np.float32) for i in range(2)]
    assert np.allclose(model.fuse(images, device="cuda"), model.fuse(images, device="cpu"), atol=1e-4)


def test_inference_context_restores_grad_mode():
    torch.set_grad_enabled(True)
    with inference_context():
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


# ------------------------------------------------------------------ training


def test_training_reduces_the_loss_and_is_reproducible(dataset):
    config = TrainingConfig(iterations=120, validation_every=40, seed=5, patience=None)
    torch.manual_seed(0)
    model = FusionModel.create("cnn", 2, 32, width=8, hidden=8)
    history = model.fit(dataset, config)
    assert len(history.train_loss) == 120
    assert history.validation_iterations == [40, 80, 120]
    assert history.validation_loss[-1] < history.validation_loss[0]
    assert np.mean(history.train_loss[-20:]) < np.mean(history.train_loss[:20])
    assert history.best_iteration in history.validation_iterations
    assert model.info.training["iterations_run"] == 120
    # Same initial weights, data, config and seed -> bit-identical weights.
    trained = []
    for _ in range(2):
        torch.manual_seed(0)
        again = FusionModel.create("cnn", 2, 32, width=8, hidden=8)
        again.fit(dataset, TrainingConfig(iterations=30, validation_every=10, seed=9))
        trained.append(again.network.state_dict())
    for name, value in trained[0].items():
        assert torch.equal(value, trained[1][name]), name


def test_the_dbm_recipe_is_bit_reproducible():
    """The shipped DBM's recipe, cut to seconds: pre-training, patches, structure term -- twice, same weights."""
    from MedFusionLib.recipes import recipe, train_recipe

    spec = recipe("dbm")
    spec["data"].update(count_per_pair=1, shape=(64, 64))
    spec["training"].iterations, spec["training"].validation_every = 12, 6
    spec["training"].pretrain_blocks, spec["training"].pretrain_epochs = 300, 1
    assert spec["training"].structure_weight > 0 and spec["network"]["predicts"] == "weights"
    first, second = (train_recipe(spec)[0].network.state_dict() for _ in range(2))
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


@pytest.mark.parametrize("family, fraction", [("cnn", 0.0), ("cnn", 0.5), ("dbm", 0.5)])
def test_small_block_steps(dataset, monkeypatch, family, fraction):
    # The CNN may train a share of its steps on smaller blocks (so block-mode fusion with a small n
    # meets a learned rule); the DBM is tied to its block size and never does.
    sizes = []
    original = TripletDataset.sample_blocks

    def recording(self, n, count, rng, augment=True):
        sizes.append(n)
        return original(self, n, count, rng, augment)

    monkeypatch.setattr(TripletDataset, "sample_blocks", recording)
    kwargs = {"layer_sizes": (32, 16)} if family == "dbm" else {"width": 4, "hidden": 4}
    model = FusionModel.create(family, 2, 16 if family == "cnn" else 4, seed=0, **kwargs)
    # The CNN's steps are its block size; the DBM's, patches several of its blocks wide.
    patch = 16 if family == "cnn" else training_patch_size(model, TrainingConfig(), dataset)
    assert patch == (16 if family == "cnn" else min(64, 1 << (dataset.min_side().bit_length() - 1)))
    config = TrainingConfig(iterations=60, validation_every=30, seed=1, small_block_fraction=fraction,
                            pretrain_epochs=1, pretrain_blocks=64)
    history = model.fit(dataset, config)
    steps = sizes[-60:]  # validation and pre-training samples come first
    small = [i for i, n in enumerate(steps, start=1) if n != patch]
    assert history.small_block_iterations == small  # recorded, so curves can leave them out
    iterations, losses = history.full_size_losses()
    assert iterations == [i for i in range(1, 61) if i not in small] and len(losses) == len(iterations)
    if family == "cnn" and fraction:
        assert set(steps) - {16} and set(steps) <= {2, 4, 8, 16}
        assert 10 < steps.count(16) < 50
    else:
        assert set(steps) == {patch} and not small


def test_training_patch_size_is_checked_and_used(dataset):
    model = FusionModel.create("dbm", 2, 4, layer_sizes=(16,), seed=0)
    for bad in (0, 24, 2.0, "8"):
        with pytest.raises(InputError, match="patch_size"):
            model.fit(dataset, TrainingConfig(iterations=2, patch_size=bad))
    assert training_patch_size(model, TrainingConfig(patch_size=8), dataset) == 8
    with pytest.raises(InputError, match="smaller than the DBM's 4x4 blocks"):
        training_patch_size(model, TrainingConfig(patch_size=2), dataset)
    with pytest.raises(InputError, match="larger than the smallest training image side"):
        training_patch_size(model, TrainingConfig(patch_size=1024), dataset)
    values = FusionModel.create("dbm", 2, 4, layer_sizes=(16,), predicts="values")
    assert training_patch_size(values, TrainingConfig(), dataset) == 4  # the first form learns whole blocks
    with pytest.raises(InputError, match="predicts fused 4x4 blocks"):
        values.fit(dataset, TrainingConfig(iterations=2, patch_size=8))


def test_stride_is_refused_where_no_blocks_are_fused():
    image = np.zeros((16, 16), np.float32)
    with pytest.raises(InputError, match="cuts its own 8x8 blocks at stride 4"):
        FusionModel.create("dbm", 2, 8, layer_sizes=(16,), seed=0).fuse([image, image], stride=2)
    with pytest.raises(InputError, match="needs block_size"):
        FusionModel.create("cnn", 2, 16).fuse([image, image], stride=8)


def test_small_block_fraction_is_checked(dataset):
    for bad in (-0.1, 1.0, "0.2", None):
        with pytest.raises(InputError, match="small_block_fraction"):
            FusionModel.create("cnn", 2, 16).fit(dataset, TrainingConfig(iterations=2, small_block_fraction=bad))


def test_early_stopping_and_checkpoint(dataset, tmp_path):
    model = FusionModel.create("cnn", 2, 32, width=8, hidden=8)
    checkpoint = tmp_path / "best.pt"
    history = model.fit(dataset, TrainingConfig(iterations=400, validation_every=10, patience=1,
                                                learning_rate=0.5, seed=1, checkpoint=str(checkpoint)))
    assert history.stopped_early and len(history.train_loss) < 400
    saved = FusionModel.load(checkpoint)
    for pa, pb in zip(saved.network.state_dict().values(), model.network.state_dict().values()):
        assert torch.equal(pa, pb)  # the best weights are restored and checkpointed


def test_cancel_restores_the_model(dataset):
    model = FusionModel.create("cnn", 2, 32, width=8, hidden=8)
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    cancel = threading.Event()
    calls = []

    def progress(fraction, message):
        calls.append(fraction)
        cancel.set()

    with pytest.raises(TrainingCancelled):
        model.fit(dataset, TrainingConfig(iterations=100, validation_every=10), progress=progress, cancel=cancel)
    assert calls  # it did start
    for key, value in model.network.state_dict().items():
        assert torch.equal(value, before[key])


def test_dbm_training_pretrains_then_fine_tunes(dataset):
    model = FusionModel.create("dbm", 2, 8, layer_sizes=(64, 32))
    history = model.fit(dataset, TrainingConfig(iterations=200, validation_every=50, learning_rate=1e-3,
                                                pretrain_blocks=2000, pretrain_epochs=3, seed=0, patience=None))
    assert len(history.pretraining) == 2  # one record per RBM layer
    first_layer = history.pretraining[0]["reconstruction_error"]
    assert first_layer[-1] < first_layer[0]
    assert history.validation_loss[-1] < history.validation_loss[0]
    # the fine-tuned network is the unrolled RBM stack, not a fresh one
    assert isinstance(model.network, BlockDBMNet)


def test_dataset_validation():
    a = np.zeros((16, 16), np.float32)
    with pytest.raises(InputError, match="no triplets"):
        TripletDataset([])
    with pytest.raises(InputError, match="one shape"):
        TripletDataset([Triplet([a, np.zeros((8, 8), np.float32)], a)])
    with pytest.raises(InputError, match="NaN"):
        TripletDataset([Triplet([a, a + np.nan], a)])
    with pytest.raises(InputError, match="same number"):
        TripletDataset([Triplet([a, a], a), Triplet([a, a, a], a)])
    ds = TripletDataset([Triplet([a, a], a)])
    with pytest.raises(InputError, match="larger than the smallest"):
        ds.sample_blocks(32, 1, np.random.default_rng(0))
    model = FusionModel.create("cnn", 3, 8)
    with pytest.raises(InputError, match="the model fuses 3"):
        model.fit(ds, TrainingConfig(iterations=1))


def test_fusion_loss_terms():
    x = torch.zeros(1, 1, 4, 4)
    y = torch.ones(1, 1, 4, 4)
    assert fusion_loss(x, y, 0.0).item() == pytest.approx(1.0)
    ramp = torch.arange(16.0).view(1, 1, 4, 4)
    assert fusion_loss(ramp, ramp + 1, 0.5).item() == pytest.approx(1.0)  # gradients equal: only MSE
    assert fusion_loss(ramp, torch.zeros_like(ramp), 0.5).item() > fusion_loss(ramp, torch.zeros_like(ramp), 0.0).item()


def test_fusion_loss_structure_term_scores_the_prediction_against_its_sources():
    from pytorch_msssim import ssim

    rng = np.random.default_rng(1)
    inputs = torch.from_numpy(rng.random((3, 2, 16, 16), dtype=np.float32))
    target = inputs.mean(dim=1, keepdim=True)
    prediction = (target + 0.05 * torch.from_numpy(rng.standard_normal((3, 1, 16, 16), dtype=np.float32))).requires_grad_()
    plain = fusion_loss(prediction, target, 0.5)
    with_structure = fusion_loss(prediction, target, 0.5, inputs, structure_weight=0.3)
    expected = 1 - (ssim(prediction, inputs[:, :1], data_range=1.0) + ssim(prediction, inputs[:, 1:], data_range=1.0)) / 2
    assert with_structure.item() == pytest.approx(plain.item() + 0.3 * expected.item(), rel=1e-5)
    with_structure.backward()
    assert prediction.grad is not None and bool(prediction.grad.abs().sum() > 0)
    # A prediction equal to both (equal) sources loses nothing to the term; blocks under the window have none.
    same = inputs[:, :1].expand(-1, 2, -1, -1)
    assert fusion_loss(same[:, :1], same[:, :1], 0.5, same, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    small = inputs[..., :8, :8]
    assert fusion_loss(small[:, :1], target[..., :8, :8], 0.5, small, 1.0).item() == pytest.approx(
        fusion_loss(small[:, :1], target[..., :8, :8], 0.5).item())
    with pytest.raises(InputError, match="structure_weight"):
        FusionModel.create("cnn", 2, 8).fit(TripletDataset([Triplet([np.zeros((8, 8), np.float32)] * 2,
                                                                    np.zeros((8, 8), np.float32))]),
                                            TrainingConfig(iterations=1, structure_weight=-1.0))


def test_banded_scoring_equals_whole_map_scoring(monkeypatch):
    torch.manual_seed(4)
    network = PyramidWeightCNN(n_inputs=3, width=6, hidden=5).double().eval()
    for parameter in network.parameters():
        parameter.data.normal_(0, 0.5)
    x = torch.rand(2, 3, 96, 80, dtype=torch.float64)
    with torch.no_grad():
        banded = network(x)
        monkeypatch.setattr(PyramidWeightCNN, "band_elements", 1 << 40)  # one band: the plain computation
        whole = network(x)
    assert torch.allclose(banded, whole, atol=1e-12)


def test_patience_must_be_positive_and_bad_tensor_shapes(dataset):
    model = FusionModel.create("cnn", 2, 32, width=4, hidden=4)
    with pytest.raises(InputError, match="patience"):
        model.fit(dataset, TrainingConfig(iterations=10, patience=0))
    with pytest.raises(InputError, match="batch, images, height, width"):
        model.fuse_tensor(torch.rand(2, 16, 16))


def test_training_reports_and_cancels_between_validations(dataset):
    """With one validation at the very end, progress still comes about every 1 % and a cancel
    stops training at the next report, leaving the weights as they were."""
    model = FusionModel.create("cnn", 2, 32, width=4, hidden=4, seed=0)
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    flag, seen = threading.Event(), []

    def progress(fraction: float, message: str) -> None:
        seen.append(fraction)
        if len(seen) == 3:
            flag.set()

    with pytest.raises(TrainingCancelled):
        model.fit(dataset, TrainingConfig(iterations=500, validation_every=500, seed=0), progress=progress, cancel=flag)
    assert seen == pytest.approx([0.01, 0.02, 0.03])  # every 5 of 500 iterations; stopped at the 4th report
    assert all(torch.equal(before[k], v) for k, v in model.network.state_dict().items())


def test_the_first_form_dbm_joins_its_blocks_without_a_grid(monkeypatch):
    """A DBM that predicts fused blocks (the first form, still loadable) has them blended with a Hann
    window: its fusions show no more block grid than the Laplacian pyramid's (issue: a plain average
    left a grid at the block stride)."""
    import MedFusionLib.engine.model as model_module
    from MedFusionLib import fuse
    from MedFusionLib.data.targets import MODALITY_PAIRS, phantom_cases
    from MedFusionLib.metrics import block_grid_index
    from MedFusionLib.recipes import recipe, train_recipe

    spec = recipe("dbm")  # the shipped recipe's data, the first form's network and training, cut to seconds
    spec["network"] = {"layer_sizes": (256, 128), "predicts": "values"}
    spec["training"].patch_size, spec["training"].batch_size, spec["training"].learning_rate = None, 64, 1e-3
    spec["training"].iterations, spec["training"].pretrain_blocks, spec["training"].pretrain_epochs = 400, 3000, 1
    spec["data"].update(count_per_pair=2, shape=(128, 128))
    dbm, _ = train_recipe(spec)
    cases = phantom_cases(1, (96, 96), MODALITY_PAIRS, seed=900)  # held-out seeds

    def grid(method) -> float:
        return float(np.mean([block_grid_index(fuse(list(c.inputs), method).image) for c in cases]))

    windowed, pyramid = grid(dbm), grid("laplacian")
    plain_average = model_module.fuse_blockwise

    def uniform(*args, **kwargs):
        return plain_average(*args, **{**kwargs, "weights": "uniform"})

    monkeypatch.setattr(model_module, "fuse_blockwise", uniform)
    averaged = grid(dbm)
    assert windowed <= pyramid + 0.03, (windowed, pyramid)
    assert windowed < averaged - 0.02, (windowed, averaged)  # what the plain average left
