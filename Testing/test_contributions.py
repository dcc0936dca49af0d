"""Contribution maps: each input's share of every fused pixel, for the learned model and every baseline."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedFusionLib import InputError, fuse, fuse_files, fuse_volume
from MedFusionLib.baselines import BASELINES
from MedFusionLib.baselines.pyramid import _expand
from MedFusionLib.cli import main
from MedFusionLib.contributions import BASE_FLOOR, combine_scales
from MedFusionLib.data.targets import phantom_cases
from MedFusionLib.engine.model import FusionModel
from MedFusionLib.engine.networks import pyramid_expand
from MedFusionLib.io import LoadedImage, read_image, write_image

METHODS = ["default", *BASELINES]


@pytest.fixture(scope="module")
def pair() -> list[np.ndarray]:
    case = phantom_cases(1, (64, 72), [("CT", "MRI_T1")], seed=5)[0]
    return [np.rint(x * 255).astype(np.uint8) for x in case.inputs]


@pytest.fixture(scope="module")
def textured() -> np.ndarray:
    """Structure everywhere: smoothed noise plus edges (the side a contribution map must favour)."""
    rng = np.random.default_rng(3)
    noise = rng.random((64, 64))
    image = 0.5 * noise + 0.5 * (np.add.outer(np.arange(64), np.arange(64)) // 8 % 2)
    return (image / image.max()).astype(np.float32)


def _check_shares(shares: np.ndarray, count: int, shape: tuple[int, int]) -> None:
    assert shares.shape == (count, *shape) and shares.dtype == np.float32
    assert shares.min() >= -1e-6 and shares.max() <= 1 + 1e-6
    np.testing.assert_allclose(shares.sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_shares_sum_to_one_and_leave_the_fusion_unchanged(pair, method):
    plain = fuse(pair, method)
    mapped = fuse(pair, method, contributions=True)
    np.testing.assert_array_equal(mapped.image, plain.image)
    _check_shares(mapped.contributions, 2, pair[0].shape)
    assert plain.contributions is None


@pytest.mark.parametrize("method", ["default", "laplacian", "guided_filter", "wavelet"])
def test_a_flat_input_contributes_little_where_the_other_has_structure(textured, method):
    flat = np.full_like(textured, 0.5)
    for order in ((textured, flat), (flat, textured)):  # whichever position the structure is in
        shares = fuse(list(order), method, contributions=True).contributions
        structured = 0 if order[0] is textured else 1
        assert shares[structured].mean() > 0.75, (method, structured, shares[structured].mean())


def test_pixel_rules_give_their_own_maps(pair):
    shares = fuse(pair, "average", contributions=True).contributions
    np.testing.assert_allclose(shares, 0.5)
    a, b = (x.astype(np.float32) / 255 for x in pair)
    shares = fuse(pair, "maximum", contributions=True).contributions
    np.testing.assert_array_equal(shares[0], (a >= b).astype(np.float32))  # ties: the earlier input
    np.testing.assert_array_equal(shares[1], (b > a).astype(np.float32))


def test_three_inputs_and_block_mode(pair):
    third = np.ascontiguousarray(pair[0].T[:, : pair[0].shape[1]]) if pair[0].shape[0] == pair[0].shape[1] else (
        255 - pair[1])
    result = fuse([*pair, third], contributions=True)
    _check_shares(result.contributions, 3, pair[0].shape)
    blocks = fuse(pair, block_size=16, contributions=True)
    _check_shares(blocks.contributions, 2, pair[0].shape)
    np.testing.assert_array_equal(blocks.image, fuse(pair, block_size=16).image)


def test_the_shipped_dbm_has_a_map_and_one_of_the_first_form_says_why_not(pair):
    shipped = fuse(pair, "dbm", contributions=True)  # it weights its inputs' pyramid levels
    _check_shares(shipped.contributions, 2, pair[0].shape)
    np.testing.assert_array_equal(shipped.image, fuse(pair, "dbm").image)
    first_form = FusionModel.create("dbm", block_size=8, layer_sizes=(16,), seed=0, predicts="values")
    with pytest.raises(InputError, match="predicts fused values, not weights"):
        fuse(pair, first_form, contributions=True)
    with pytest.raises(InputError, match="True or False"):
        fuse(pair, "average", contributions="yes")


def test_combine_scales_is_one_rule_for_numpy_and_torch():
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(3, s, s)) for s in (16, 8, 4)]
    weights = [np.exp(x) / np.exp(x).sum(0) for x in logits]
    details = [rng.normal(scale=0.05, size=(1, s, s)) for s in (16, 8)]
    numpy_map = combine_scales(list(zip(weights[:2], details)), weights[2], _expand)
    np.testing.assert_allclose(numpy_map.sum(0), 1.0, atol=1e-12)
    assert numpy_map.min() >= 0
    tensors = lambda xs: [torch.from_numpy(x)[None] for x in xs]  # noqa: E731
    torch_map = combine_scales(list(zip(tensors(weights[:2]), tensors(details))), tensors(weights[2:])[0],
                               pyramid_expand)[0].numpy()
    np.testing.assert_allclose(torch_map.sum(0), 1.0, atol=1e-12)
    # Where the fused detail is far above one grey level the map is that level's weights; where there
    # is none, the base's.
    strong = [(weights[0], np.full((1, 16, 16), 1e6 * BASE_FLOOR))]
    np.testing.assert_allclose(combine_scales(strong, weights[1], _expand), weights[0], atol=1e-5)
    none = [(weights[0], np.zeros((1, 16, 16)))]
    np.testing.assert_allclose(combine_scales(none, np.full((3, 8, 8), 1 / 3), _expand), 1 / 3, atol=1e-12)


def test_volumes_give_one_map_per_input_of_the_inputs_kind(pair):
    volumes = [LoadedImage(np.stack([x] * 3), (0.5, 0.5, 2.0), (1.0, 2.0, 3.0), tuple(np.eye(3).ravel())) for x in pair]
    result = fuse_volume(volumes, contributions=True)
    assert len(result.contributions) == 2 and all(isinstance(c, LoadedImage) for c in result.contributions)
    assert result.contributions[0].geometry_matches(volumes[0])
    slice_map = fuse(pair, contributions=True).contributions
    np.testing.assert_allclose(result.contributions[0].array[1], slice_map[0], atol=1e-5)
    for method in ("laplacian", "average"):
        shares = fuse_volume(volumes, method, contributions=True).contributions
        np.testing.assert_allclose(shares[0].array + shares[1].array, 1.0, atol=1e-5)


def test_fuse_files_writes_the_map_beside_the_output_or_nothing(pair, tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path, image in zip(paths, pair):
        write_image(image, path)
    result = fuse_files(paths, tmp_path / "fused.png", contributions=tmp_path / "map.nii.gz")
    written = sitk.ReadImage(str(tmp_path / "map.nii.gz"))
    assert written.GetNumberOfComponentsPerPixel() == 2 and written.GetSize() == (pair[0].shape[1], pair[0].shape[0])
    np.testing.assert_allclose(np.moveaxis(sitk.GetArrayFromImage(written), -1, 0), result.contributions, atol=1e-7)
    assert result.contributions_path == tmp_path / "map.nii.gz"
    # A map format that cannot hold float shares, or the output's own name: refused before any work.
    with pytest.raises(InputError, match="write the map to one of"):
        fuse_files(paths, tmp_path / "other.png", contributions=tmp_path / "map.png")
    with pytest.raises(InputError, match="a file of its own"):
        fuse_files(paths, tmp_path / "same.nii.gz", contributions=tmp_path / "same.nii.gz")
    # The fused output fails to write (a format no writer has): the map must not appear either.
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputError, match="unsupported output format"):
        fuse_files(paths, tmp_path / "fused.unknownformat", contributions=tmp_path / "map2.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_contributions(pair, tmp_path, capsys):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path, image in zip(paths, pair):
        write_image(image, path)
    assert main(["fuse", *map(str, paths), "-o", str(tmp_path / "f.png"), "--contributions", str(tmp_path / "c.tif"),
                 "-q"]) == 0
    assert "input k's share" in capsys.readouterr().out
    shares = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c.tif")))
    np.testing.assert_allclose(shares.sum(-1), 1.0, atol=1e-5)
    assert read_image(tmp_path / "f.png").array.shape == pair[0].shape
