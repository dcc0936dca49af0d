"""Security (no code from files, no shell, manifest paths taken literally) and determinism
(same inputs and seed give bit-identical outputs on the CPU, across processes and thread counts)."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from MedFusionLib.batch import groups_from_manifest
from MedFusionLib.engine.model import FusionModel
from MedFusionLib.errors import InputError
from MedFusionLib.fusion import fuse, fuse_volume
from robustness import builders as b

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- model files


def test_hostile_pickle_is_refused_without_running(tmp_path):
    model, marker = b.hostile_model_file(tmp_path / "model.pt", tmp_path / "PWNED"), tmp_path / "PWNED"
    with pytest.raises(InputError, match="not a readable MedFusion model file"):
        FusionModel.load(model)
    with pytest.raises(InputError):
        fuse([np.zeros((8, 8)), np.ones((8, 8))], method=str(model))
    assert not marker.exists(), "loading the model ran code from the file"
    # The file really is hostile: full unpickling (what MedFusion never does) runs its code.
    torch.load(model, weights_only=False)
    assert marker.exists()


def test_model_files_hold_only_tensors_and_plain_data(tmp_path):
    path = b.small_model_file(tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)  # would raise on anything but allow-listed types
    assert set(payload) == {"format", "format_version", "info", "state_dict"}
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield owner, name, node


def test_no_user_string_can_reach_a_shell_or_eval():
    """No shell, no eval/exec, no pickle.load anywhere in the library or the Slicer module."""
    offenders = []
    for path in [*(REPO / "MedFusionLib").rglob("*.py"), *(REPO / "MedFusion").rglob("*.py")]:
        for owner, name, node in _calls(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if (owner, name) in {("os", "system"), ("os", "popen"), ("pickle", "load"), ("pickle", "loads")} \
                    or (isinstance(node.func, ast.Name) and name in {"eval", "exec"}):
                offenders.append(f"{where} {owner}.{name}")
            if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords):
                offenders.append(f"{where} shell=")
            if name == "load" and owner == "torch" and not any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords):
                offenders.append(f"{where} torch.load without weights_only=True")
    assert offenders == []


def test_manifest_paths_are_taken_literally_and_relative_to_the_manifest(tmp_path):
    """No ~, $VAR or glob expansion; relative paths resolve against the manifest's folder."""
    data = tmp_path / "data"
    ct, mri = b.grey_png_pair(data)
    manifest = data / "cases.csv"
    manifest.write_text(f"name,input_1,input_2\nrelative,{ct.name},../data/{mri.name}\n")
    assert groups_from_manifest(manifest)[0].inputs == (ct.resolve(), mri.resolve())
    for cell in ["~/ct.png", "$HOME/ct.png", "*.png", "$(echo ct.png)"]:
        manifest.write_text(f"name,input_1,input_2\ncase,{cell},{mri.name}\n")
        with pytest.raises(InputError, match="no such file"):
            groups_from_manifest(manifest)


# ----------------------------------------------------------------------------- determinism


def test_fusion_is_bit_identical_when_repeated():
    a, c = b.pair((70, 90))
    first = [fuse([a, c]).image, fuse([a, c], block_size=16).image]
    second = [fuse([a, c]).image, fuse([a, c], block_size=16).image]
    assert all(np.array_equal(x, y) for x, y in zip(first, second))
    va, vc = b.pair((5, 40, 36))
    assert np.array_equal(fuse_volume([va, vc]).array, fuse_volume([va, vc]).array)
    # Another slice batch size may pick another convolution kernel order: equal to float32 rounding only.
    np.testing.assert_allclose(fuse_volume([va, vc]).array, fuse_volume([va, vc], batch_size=2).array, atol=1e-6)


def test_cli_output_is_bit_identical_across_processes_and_thread_counts(tmp_path):
    inputs = b.volume_pair(tmp_path / "in", shape=(6, 64, 64))
    digests = set()
    for threads in ("1", "2"):
        output = tmp_path / f"fused_{threads}.nii.gz"
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        subprocess.run([sys.executable, "-m", "MedFusionLib.cli", "fuse", *map(str, inputs), "-o", str(output), "-q"],
                       env=env, check=True, capture_output=True)
        import SimpleITK as sitk

        digests.add(hashlib.sha256(sitk.GetArrayFromImage(sitk.ReadImage(str(output))).tobytes()).hexdigest())
    assert len(digests) == 1


@pytest.mark.parametrize("family", ["cnn", "dbm"])
def test_training_with_one_seed_is_bit_identical(family):
    from MedFusionLib.engine.training import Triplet, TripletDataset, TrainingConfig

    a, c = b.pair((48, 48))
    dataset = TripletDataset([Triplet((a.astype(np.float32), c.astype(np.float32)), ((a + c) / 2).astype(np.float32))])
    states = []
    for _ in range(2):
        model = FusionModel.create(family, 2, 16, seed=3, **({"width": 4, "hidden": 4, "levels": 2} if family == "cnn"
                                                             else {"layer_sizes": (32,)}))
        model.fit(dataset, TrainingConfig(iterations=15, batch_size=4, validation_every=5, seed=3, device="cpu"))
        states.append({k: v.clone() for k, v in model.network.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("family", ["cnn", "dbm"])
def test_create_seed_sets_the_initial_weights_and_leaves_the_global_generator_alone(family):
    config = {"width": 4, "hidden": 4, "levels": 2} if family == "cnn" else {"layer_sizes": (32,)}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = FusionModel.create(family, 2, 16, seed=3, **config).network.state_dict()
    assert torch.equal(torch.rand(3), expected_next)  # the caller's generator did not move
    again = FusionModel.create(family, 2, 16, seed=3, **config).network.state_dict()
    other = FusionModel.create(family, 2, 16, seed=4, **config).network.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
