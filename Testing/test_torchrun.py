"""``medfusion train`` under a real ``torchrun --nproc_per_node=2`` (gloo, 127.0.0.1): DistributedDataParallel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from MedFusionLib import fuse
from MedFusionLib.engine.model import FusionModel

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(*arguments: str, script: str | None = None, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    command += [script] if script else ["-m", "MedFusionLib.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([*command, *arguments], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          encoding="utf-8", errors="replace")


def test_two_processes_train_a_model_rank_0_writes_it(tmp_path):
    out = tmp_path / "ddp.pt"
    run = _torchrun("train", "--recipe", "smoke", "-o", str(out), "-q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "trained on 2 processes" in run.stdout and run.stdout.count("model written") == 1  # rank 0 only
    model = FusionModel.load(out)
    history = json.loads(Path(f"{out}.history.json").read_text())
    assert len(history["train_loss"]) == 20 and history["validation_iterations"] == [10, 20]
    a = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    fused = fuse([a, 1 - a], model).image
    assert fused.shape == (48, 48) and np.isfinite(fused).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.pt", "ddp.pt.history.json"]


def test_a_failing_rank_ends_the_run_and_no_model_is_written(tmp_path):
    out = tmp_path / "never.pt"
    run = _torchrun("train", "--recipe", "smoke", "-o", str(out), "-q", script=str(HERE / "_ddp_rank_fails.py"),
                    cwd=tmp_path)
    assert run.returncode != 0
    assert "rank 1 fails on purpose" in run.stderr + run.stdout
    assert list(tmp_path.iterdir()) == []  # no model, no history, no temporary


def test_tuning_is_refused_under_torchrun(tmp_path):
    run = _torchrun("train", "--recipe", "smoke", "--tune", "2", "-o", str(tmp_path / "t.pt"), "-q", cwd=tmp_path)
    assert run.returncode != 0 and "--tune runs in one process" in run.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("variable", ["RANK", "MASTER_ADDR"])
def test_a_single_process_never_joins_a_group(monkeypatch, variable):
    from MedFusionLib.engine import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv(variable, raising=False)
    assert not distributed.launched_by_torchrun()
    with distributed.process_group() as ranks:
        assert (ranks.rank, ranks.world_size, ranks.main) == (0, 1, True)


def test_ctrl_c_ends_every_rank_and_no_model_is_written(tmp_path):
    """Ctrl-C reaches torchrun's process group; every rank stops and nothing is written."""
    import signal
    import time

    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "MedFusionLib.cli",
               "train", "--recipe", "smoke", "--iterations", "100000", "-o", str(tmp_path / "m.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONIOENCODING": "utf-8"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    seen = b""
    deadline = time.monotonic() + 120
    while b"iteration" not in seen and time.monotonic() < deadline and process.poll() is None:
        seen += process.stderr.read1(4096)  # rank 0's progress bar: training has started
    assert b"iteration" in seen, seen[-2000:]
    os.killpg(process.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the whole foreground group
    process.communicate(timeout=120)
    assert process.returncode != 0
    assert list(tmp_path.iterdir()) == []
