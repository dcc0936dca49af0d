"""Training on several processes with ``torchrun``: the process group and what the ranks agree on.

``torchrun --nproc_per_node=N -m MedFusionLib.cli train ...`` starts N copies of ``medfusion train``;
torchrun gives each its ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` and the rendezvous address
(``MASTER_ADDR``/``MASTER_PORT``). Inside :func:`process_group` they form one
``torch.distributed`` group -- gloo on the CPU, NCCL when each rank has a GPU -- and
:func:`~MedFusionLib.engine.training.train` wraps the network in ``DistributedDataParallel``:
every rank draws its own blocks (its generator is seeded from the run's seed and its rank),
gradients are averaged across ranks at every step, rank 0 alone validates, decides early
stopping for all, writes checkpoints and the model file. Outside torchrun nothing changes.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

#: How long a rank waits for the others at a collective before the run fails (a rank that died is
#: normally noticed at once, through its closed connection, and torchrun stops the others).
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the run: ``rank`` of ``world_size`` (0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that validates, prints and writes files."""
        return self.rank == 0


def current() -> Ranks:
    """This process's place in the process group (a single process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Ranks()


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting the same variables) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ and "MASTER_ADDR" in os.environ


@contextlib.contextmanager
def process_group(device: str | None = None) -> Iterator[Ranks]:
    """Join torchrun's process group for the block (nothing to do for a single process).

    :param device: the training device asked for (``"cpu"`` forces gloo; otherwise NCCL when CUDA is present).
    :returns: (yields) this process's :class:`Ranks`.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        yield current()
        return
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def training_device(device: torch.device) -> torch.device:
    """Each rank's own GPU under torchrun (``cuda:LOCAL_RANK``); the device unchanged otherwise."""
    ranks = current()
    if ranks.distributed and device.type == "cuda":
        return torch.device("cuda", ranks.local_rank)
    return device


def from_main(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag``, on every rank (early stopping must end all ranks at the same step)."""
    if not current().distributed:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def wait_for_all() -> None:
    """Every rank has reached this point (rank 0 writes the model only after every rank finished training)."""
    if current().distributed:
        dist.barrier()
