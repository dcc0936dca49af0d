"""``medfusion batch`` on a real Dask cluster (``distributed.LocalCluster``, 2 worker processes, 127.0.0.1 only).

Checked against the in-process batch: the same files byte for byte, the same report rows in the
same order, resume, a failing case, cancel, and a worker killed mid-case (Dask retries the case
elsewhere; the output is written once).
"""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

distributed = pytest.importorskip("distributed")

from MedFusionLib.batch import BatchCancelled, Group, groups_from_manifest, run_batch  # noqa: E402
from MedFusionLib.cli import main  # noqa: E402
from MedFusionLib.cluster import local_cluster  # noqa: E402
from MedFusionLib.errors import InputError  # noqa: E402

METHOD = "laplacian"  # fast and exact; one test uses the default model


def _volume(path: Path, seed: int, shape=(12, 40, 40)) -> Path:
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    array = (np.exp(-(i**2 + j**2 + k**2) * (2 + seed % 3)) + 0.2 * rng.random(shape)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 0.9, 2.0))
    sitk.WriteImage(image, str(path))
    return path


def _manifest(folder: Path, cases: int, shape=(12, 40, 40), broken: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["name,input_1,input_2"]
    for index in range(cases):
        a = _volume(folder / f"a{index}.nii.gz", 2 * index, shape)
        other = shape if index != broken else (shape[0], shape[1] - 4, shape[2])  # a shape mismatch: fails
        b = _volume(folder / f"b{index}.nii.gz", 2 * index + 1, other)
        rows.append(f"case{index},{a},{b}")
    (folder / "cases.csv").write_text("\n".join(rows) + "\n")
    return folder / "cases.csv"


def _report(folder: Path) -> list[dict[str, str]]:
    with open(folder / "batch_report.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "batch_report.csv"}


def test_starting_a_local_cluster_leaves_this_processs_environment_alone():
    """Dask's nanny exports OMP_NUM_THREADS=1 & co. into the parent: later processes would run on one thread."""
    before = dict(os.environ)
    with local_cluster(1):
        assert dict(os.environ) == before
    assert dict(os.environ) == before


@pytest.fixture(scope="module")
def scheduler():
    with local_cluster(2) as address, distributed.Client(address, set_as_default=False) as client:
        info = client.scheduler_info()
        # nothing listens beyond the loopback: scheduler, workers and dashboard
        assert address.startswith("tcp://127.0.0.1:") and len(info["workers"]) == 2
        assert all(worker.startswith("tcp://127.0.0.1:") for worker in info["workers"])
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        yield address


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return _manifest(tmp_path_factory.mktemp("cases"), 5, broken=3)


def test_same_outputs_and_report_as_in_process(manifest, scheduler, tmp_path):
    groups = groups_from_manifest(manifest)
    local = run_batch(groups, tmp_path / "local", METHOD)
    seen = []
    remote = run_batch(groups, tmp_path / "dask", METHOD, scheduler=scheduler,
                       progress=lambda fraction, message: seen.append(fraction))
    assert _files(tmp_path / "dask") == _files(tmp_path / "local")  # byte for byte
    rows, expected = _report(tmp_path / "dask"), _report(tmp_path / "local")
    assert [r["name"] for r in rows] == [f"case{i}" for i in range(5)]  # the groups' order, not completion's
    for row, reference in zip(rows, expected):
        assert {k: v for k, v in row.items() if k not in ("seconds", "output")} == \
               {k: v for k, v in reference.items() if k not in ("seconds", "output")}
    assert [r.status for r in remote.rows] == ["done", "done", "done", "failed", "done"]
    assert "shape" in remote.rows[3].error and not (tmp_path / "dask" / "case3_fused.nii.gz").exists()
    assert sorted(seen) == seen and seen[-1] == 1.0 and len(seen) == 5
    assert local.failed == remote.failed == 1


def test_resume_skips_what_exists(manifest, scheduler, tmp_path):
    groups = groups_from_manifest(manifest)
    run_batch(groups, tmp_path, METHOD, scheduler=scheduler, metrics=False)
    first = _files(tmp_path)
    (tmp_path / "case1_fused.nii.gz").unlink()
    again = run_batch(groups, tmp_path, METHOD, scheduler=scheduler, metrics=False)
    assert [r.status for r in again.rows] == ["skipped", "done", "skipped", "failed", "skipped"]
    assert _files(tmp_path) == first


def test_the_model_goes_to_each_worker_and_matches_in_process(scheduler, tmp_path):
    manifest = _manifest(tmp_path / "in", 2, shape=(6, 32, 32))
    groups = groups_from_manifest(manifest)
    run_batch(groups, tmp_path / "local", metrics=False)
    run_batch(groups, tmp_path / "dask", scheduler=scheduler, metrics=False)
    assert _files(tmp_path / "dask") == _files(tmp_path / "local")


def test_cancel_stops_pending_cases_and_leaves_no_partial_file(scheduler, tmp_path):
    manifest = _manifest(tmp_path / "in", 8)
    cancel = threading.Event()
    with pytest.raises(BatchCancelled) as raised:
        run_batch(groups_from_manifest(manifest), tmp_path / "out", METHOD, scheduler=scheduler, cancel=cancel,
                  progress=lambda fraction, message: cancel.set())  # cancel after the first finished case
    finished = raised.value.report.rows
    assert 1 <= len(finished) < 8 and [r.name for r in finished] == sorted(r.name for r in finished)
    assert [r["name"] for r in _report(tmp_path / "out")] == [r.name for r in finished]
    time.sleep(1.0)  # a case already running when cancelled may still finish: whole, never partial
    for path in (tmp_path / "out").glob("*_fused.nii.gz"):
        assert sitk.ReadImage(str(path)).GetSize() == (40, 40, 12)


def test_a_worker_killed_mid_case_has_its_case_retried_and_written_once(tmp_path):
    manifest = _manifest(tmp_path / "in", 6, shape=(48, 96, 96))
    groups = groups_from_manifest(manifest)
    run_batch(groups, tmp_path / "local", METHOD, metrics=False)
    with local_cluster(2) as address, distributed.Client(address, set_as_default=False) as client:
        outcome: dict[str, object] = {}
        runner = threading.Thread(target=lambda: outcome.update(
            report=run_batch(groups, tmp_path / "dask", METHOD, scheduler=address, metrics=False)))
        runner.start()
        killed = None
        deadline = time.monotonic() + 60
        while killed is None and time.monotonic() < deadline and runner.is_alive():
            busy = [worker for worker, tasks in client.processing().items() if tasks]
            if busy:
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)  # the nanny starts a new worker; Dask reschedules its case
                killed = pid
            time.sleep(0.005)
        runner.join(120)
    assert killed is not None, "no case was seen running"
    report = outcome["report"]
    assert [r.status for r in report.rows] == ["done"] * 6
    assert _files(tmp_path / "dask") == _files(tmp_path / "local")  # every case, once, whole; no temporaries


def test_cli_workers_and_scheduler(manifest, scheduler, tmp_path, capsys):
    assert main(["batch", str(manifest), "-o", str(tmp_path / "a"), "--method", METHOD, "--workers", "2",
                 "--no-metrics", "-q"]) == 1  # exit 1: the broken case failed, the others are done
    assert [r["status"] for r in _report(tmp_path / "a")] == ["done", "done", "done", "failed", "done"]
    assert main(["batch", str(manifest), "-o", str(tmp_path / "b"), "--method", METHOD, "--scheduler", scheduler,
                 "--no-metrics", "-q"]) == 1
    assert _files(tmp_path / "b") == _files(tmp_path / "a")
    assert main(["batch", str(manifest), "-o", str(tmp_path / "c"), "--workers", "0", "-q"]) == 2
    assert "workers" in capsys.readouterr().err


def test_refusals(manifest, tmp_path):
    groups = [Group("x", tuple(groups_from_manifest(manifest)[0].inputs))]
    with pytest.raises(InputError, match="either scheduler .* or workers"):
        run_batch(groups, tmp_path, METHOD, scheduler="tcp://127.0.0.1:1", workers=2)
