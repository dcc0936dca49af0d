"""The CNN's compiled CPU inference (numba kernels, ``MedFusionLib/engine/_kernels.py``) against PyTorch.

The kernels stand in for PyTorch only in inference mode on the CPU; these tests pin that they
give the same fused images as the PyTorch path (to float32 rounding, 1e-6) on the bundled
examples, K = 2, 3, 4, colour, blocks, volumes (several slices per batch), contribution maps and
odd sizes, and that the pyramid filters are bit for bit PyTorch's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

import MedFusionLib.engine.networks as networks  # noqa: E402
from MedFusionLib import fuse, fuse_volume  # noqa: E402
from MedFusionLib.data.examples import example_path  # noqa: E402
from MedFusionLib.engine.devices import inference_context  # noqa: E402
from MedFusionLib.io import read_image  # noqa: E402
from MedFusionLib.preprocessing import split_luminance  # noqa: E402

TOLERANCE = 1e-6


def _both(run):
    """``run()`` through PyTorch only, then with the compiled kernels."""
    previous = networks.USE_KERNELS
    try:
        networks.USE_KERNELS = False
        reference = run()
        networks.USE_KERNELS = True
        compiled = run()
    finally:
        networks.USE_KERNELS = previous
    return reference, compiled


@pytest.fixture(scope="module")
def examples() -> dict[str, np.ndarray]:
    images = {name: read_image(example_path(name)).array for name in ("ct", "mri", "mri_t2")}
    images["pet"] = split_luminance(read_image(example_path("pet_colour")))[0]
    return images


def test_the_kernels_are_used_in_inference_only():
    assert networks.compiled_kernels() is not None
    x = torch.zeros(1, 2, 8, 8)
    with inference_context():
        assert networks._kernels_for(x) is not None
    with torch.no_grad():  # training's validation: PyTorch's arithmetic, so training stays reproducible
        assert networks._kernels_for(x) is None
    assert networks._kernels_for(x) is None
    with inference_context():
        assert networks._kernels_for(x.double()) is None


@pytest.mark.parametrize("names", [("ct", "mri"), ("ct", "mri", "pet"), ("ct", "mri", "mri_t2", "pet")])
def test_same_fusion_for_k_inputs(examples, names):
    reference, compiled = _both(lambda: fuse([examples[n] for n in names]).image)
    assert np.abs(reference - compiled).max() <= TOLERANCE


def test_same_colour_fusion_and_contribution_map(examples):
    mri, pet = read_image(example_path("mri")), read_image(example_path("pet_colour"))
    reference, compiled = _both(lambda: fuse([mri.array, pet], contributions=True))
    assert np.abs(reference.colour - compiled.colour).max() <= TOLERANCE
    assert np.abs(reference.contributions - compiled.contributions).max() <= TOLERANCE


@pytest.mark.parametrize("block_size", [16, 64])
def test_same_fusion_in_block_mode(examples, block_size):
    reference, compiled = _both(lambda: fuse([examples["ct"], examples["mri"]], block_size=block_size).image)
    assert np.abs(reference - compiled).max() <= TOLERANCE


def test_same_volume_fusion_with_several_slices_per_batch():
    volumes = [read_image(example_path("ct_volume")), read_image(example_path("mri_volume"))]
    reference, compiled = _both(lambda: fuse_volume(volumes, modalities=["CT", "MRI"], batch_size=5).array)
    assert np.abs(reference - compiled).max() <= TOLERANCE


@pytest.mark.parametrize("shape", [(37, 53), (9, 300), (7, 5), (2, 3)])
def test_same_fusion_on_odd_and_tiny_sizes(shape):
    rng = np.random.default_rng(sum(shape))
    images = [rng.random(shape).astype(np.float32) for _ in range(2)]
    reference, compiled = _both(lambda: fuse(images).image)
    assert np.abs(reference - compiled).max() <= TOLERANCE


def test_pyramid_filters_are_bit_for_bit_pytorchs():
    rng = np.random.default_rng(0)
    for height in range(1, 12):
        for width in (1, 2, 3, 4, 5, 8, 11):
            x = torch.from_numpy(rng.random((2, 3, height, width), dtype=np.float32))
            coarse = torch.from_numpy(rng.random((2, 3, (height + 1) // 2, (width + 1) // 2), dtype=np.float32))

            def filters():
                with inference_context():
                    return (networks._separable_blur(x), networks.pyramid_reduce(x),
                            networks.pyramid_expand(coarse, (height, width)))

            for reference, compiled in zip(*_both(filters)):
                assert torch.equal(reference, compiled), (height, width)


def test_whole_pyramids_are_bit_for_bit_pytorchs():
    """The one-call Laplacian pyramid and collapse give PyTorch's levels exactly, down to 1-pixel sides."""
    rng = np.random.default_rng(1)
    for height, width, levels in ((37, 50, 4), (16, 16, 3), (5, 3, 2), (9, 1, 3), (64, 64, 0)):
        x = torch.from_numpy(rng.random((2, 3, height, width), dtype=np.float32))

        def pyramid():
            with inference_context():
                levels_ = networks.laplacian_pyramid(x, levels)
                return (*levels_, networks.collapse_pyramid(levels_))

        reference, compiled = _both(pyramid)
        assert len(reference) == len(compiled) == levels + 2
        for a, b in zip(reference, compiled):
            assert a.shape == b.shape and torch.equal(a, b), (height, width, levels)
        torch.testing.assert_close(compiled[-1], x, atol=1e-6, rtol=0)  # collapsing gives the image back


@pytest.mark.parametrize("count, levels", [(2, 3), (4, 3), (3, 1)])
@pytest.mark.parametrize("clamp", [True, False])
@pytest.mark.parametrize("contiguous", [True, False])
def test_weighted_levels_collapse_and_clamp_are_bit_for_bit_pytorchs(count, levels, clamp, contiguous):
    """The compiled last step (weighted levels, collapse, clamp) gives PyTorch's fused image and shares exactly."""
    rng = np.random.default_rng(count)
    x = torch.from_numpy(rng.random((2, count, 37, 50), dtype=np.float32))
    if not contiguous:  # the same values, laid out column-major
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)

    def last_step():
        with inference_context():
            pyramid = networks.laplacian_pyramid(x, levels)
            weights = [torch.softmax(torch.from_numpy(rng.normal(size=level.shape).astype(np.float32)), dim=1)
                       for level in pyramid]
            return networks.fuse_weighted_pyramid(x, pyramid, weights, clamp, contributions=True)

    state = rng.bit_generator.state

    def from_the_same_weights():
        rng.bit_generator.state = state
        return last_step()

    reference, compiled = _both(from_the_same_weights)
    for a, b in zip(reference, compiled):
        assert a.shape == b.shape and torch.equal(a, b)
    if clamp:
        assert (compiled[0] >= x.amin(dim=1, keepdim=True)).all() and (compiled[0] <= x.amax(dim=1, keepdim=True)).all()


def test_a_fresh_process_may_start_with_the_whole_pyramid_kernels():
    """In a new process whose first compiled code is the one-call pyramid (loaded from numba's cache
    after the first run), it runs and collapses back to the image; then a whole fusion, which runs
    every parallel kernel (the score heads and the last steps too), gives PyTorch's image."""
    import subprocess
    import sys

    script = ("import numpy as np, torch, MedFusionLib.engine.networks as n\n"
              "from MedFusionLib import fuse\n"
              "x = torch.rand(4, 2, 64, 64)\n"
              "with torch.inference_mode():\n"
              "    levels = n.laplacian_pyramid(x, 3)\n"
              "    assert n._kernels_for(x) is not None\n"
              "    print(float((n.collapse_pyramid(levels) - x).abs().max()))\n"
              "images = [np.random.default_rng(k).random((96, 80), dtype=np.float32) for k in range(2)]\n"
              "compiled = fuse(images).image\n"
              "n.USE_KERNELS = False\n"
              "print(float(np.abs(fuse(images).image - compiled).max()))\n")
    for _ in range(2):  # the second run loads what the first compiled (or both load an existing cache)
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        pyramid_error, fusion_error = map(float, run.stdout.split())
        assert pyramid_error < 1e-6 and fusion_error <= TOLERANCE


@pytest.mark.parametrize("contributions", [False, True])
def test_same_dbm_fusion(examples, contributions):
    """The shipped DBM weights its pyramid levels too, and goes through the same compiled last steps."""
    pair = [examples["ct"], examples["mri"]]
    reference, compiled = _both(lambda: fuse(pair, "dbm", contributions=contributions))
    assert np.abs(reference.image - compiled.image).max() <= TOLERANCE
    if contributions:
        assert np.abs(reference.contributions - compiled.contributions).max() <= TOLERANCE


def test_without_numba_pytorch_does_it_all(monkeypatch, examples):
    monkeypatch.setattr(networks, "compiled_kernels", lambda: None)
    with inference_context():
        assert networks._kernels_for(torch.zeros(1, 1, 4, 4)) is None
    fused = fuse([examples["ct"], examples["mri"]]).image
    assert fused.shape == examples["ct"].shape and np.isfinite(fused).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU runs PyTorch's path anyway")
def test_the_gpu_matches_the_compiled_cpu_path(examples):
    cpu = fuse([examples["ct"], examples["mri"]], device="cpu").image
    gpu = fuse([examples["ct"], examples["mri"]], device="cuda").image
    assert np.abs(cpu - gpu).max() <= 1e-5


def test_changed_weights_are_used_at_once(examples):
    """No stale copy of the weights: a change made any way (even through .data) shows in the next fusion."""
    from MedFusionLib.engine.model import FusionModel
    from MedFusionLib.fusion import DEFAULT_MODEL_PATH

    model = FusionModel.load(DEFAULT_MODEL_PATH)
    pair = [examples["ct"], examples["mri"]]
    before = fuse(pair, model).image
    model.network.detail_head[2].bias.data += 5.0  # .data does not bump the version counter
    model.network.base_head[0].weight.data *= 0.5
    after_compiled = fuse(pair, model).image
    networks.USE_KERNELS = False
    try:
        after_pytorch = fuse(pair, model).image
    finally:
        networks.USE_KERNELS = True
    assert np.abs(after_compiled - before).max() > 1e-3
    assert np.abs(after_compiled - after_pytorch).max() <= TOLERANCE
