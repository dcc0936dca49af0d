"""Supervised training on triplets (K registered inputs, target fused image), as both papers do.

Random n x n blocks (n = the model's block size) are cut from the training triplets,
flipped and rotated at random (fusion does not care about orientation), and the
network is fitted to the target blocks with Adam on MSE plus an optional gradient
term. A fixed set of validation blocks from held-out triplets drives early stopping;
the loss of every iteration is recorded for the convergence study. Everything is
seeded: the same data, config and seed give the same weights on the CPU.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..progress import CancelFlag, ProgressCallback
from ..validation import check_int
from . import distributed
from .devices import resolve_device
from .rbm import TrainingCancelled, pretrain_stack


@dataclass
class Triplet:
    """K registered inputs and the target fused image, all 2D ``float32`` in [0, 1], one shape.

    :param inputs: the K input images.
    :param target: the target (ideal) fused image.
    :param name: where it came from, for messages and reports.
    """

    inputs: list[np.ndarray]
    target: np.ndarray
    name: str = ""


def slice_triplets(
    inputs: Sequence[np.ndarray],
    target: np.ndarray,
    axis: int = 0,
    name: str = "",
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> list[Triplet]:
    """The 2D training cases of a volume triplet: one per slice along ``axis`` whose target is not constant.

    A constant target slice (background at the ends of a scan) teaches nothing, so it is left out.

    :param inputs: the K input volumes, standardised to [0, 1], one shape.
    :param target: the target volume, standardised to [0, 1], same shape.
    :param axis: the array axis to cut along.
    :param name: prefix of each triplet's name (``"<name> slice <index>"``).
    :param progress: ``progress(fraction, message)`` after every slice.
    :param cancel: polled before every slice; raises :class:`TrainingCancelled`.
    """
    triplets = []
    count = target.shape[axis]
    prefix = f"{name} " if name else ""
    for index in range(count):
        if cancel is not None and cancel.is_set():
            raise TrainingCancelled("training cancelled (building the training slices)")
        slice_target = np.take(target, index, axis=axis)
        if float(np.ptp(slice_target)) > 0.0:
            triplets.append(Triplet([np.take(a, index, axis=axis) for a in inputs], slice_target,
                                    f"{prefix}slice {index}"))
        if progress is not None:
            progress((index + 1) / count, f"training slice {index + 1}/{count}")
    return triplets


class TripletDataset:
    """A list of :class:`Triplet`, checked once: same K everywhere, shapes agree, values finite.

    :param triplets: the training (or validation) triplets.
    """

    def __init__(self, triplets: Sequence[Triplet]) -> None:
        triplets = list(triplets)
        if not triplets:
            raise InputError("dataset: no triplets")
        k = len(triplets[0].inputs)
        for index, triplet in enumerate(triplets):
            label = triplet.name or f"triplet {index}"
            if len(triplet.inputs) != k or k < 2:
                raise InputError(f"{label}: has {len(triplet.inputs)} inputs; every triplet needs the same number, at least 2")
            for array in (*triplet.inputs, triplet.target):
                if array.ndim != 2 or array.shape != triplet.target.shape:
                    raise InputError(f"{label}: inputs and target must be 2D images of one shape")
                if not np.all(np.isfinite(array)):
                    raise InputError(f"{label}: contains NaN or infinite values")
        self.triplets = triplets
        self.n_inputs = k
        # One (N, K+1, H, W)-free representation: a list of (K+1, H, W) float32 stacks.
        self._stacks = [
            np.ascontiguousarray(np.stack([*t.inputs, t.target]).astype(np.float32, copy=False)) for t in triplets
        ]

    def __len__(self) -> int:
        return len(self.triplets)

    def min_side(self) -> int:
        return min(min(s.shape[-2:]) for s in self._stacks)

    def split(self, validation_fraction: float, seed: int) -> tuple["TripletDataset", "TripletDataset | None"]:
        """Split whole triplets (never blocks of one image across both sides) into train and validation."""
        if len(self) < 2 or validation_fraction <= 0:
            return self, None
        order = np.random.default_rng(seed).permutation(len(self))
        n_val = min(len(self) - 1, max(1, round(validation_fraction * len(self))))
        pick = lambda idx: TripletDataset([self.triplets[i] for i in sorted(idx)])  # noqa: E731
        return pick(order[n_val:]), pick(order[:n_val])

    def sample_blocks(self, n: int, count: int, rng: np.random.Generator, augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``count`` random n x n blocks: inputs ``(count, K, n, n)`` and targets ``(count, 1, n, n)``."""
        if n > self.min_side():
            raise InputError(f"block size {n} is larger than the smallest training image side {self.min_side()}")
        which = rng.integers(0, len(self._stacks), count)
        blocks = np.empty((count, self.n_inputs + 1, n, n), dtype=np.float32)
        for index, image in enumerate(which):  # one slice copy per block: cheap next to the network
            stack = self._stacks[image]
            top = rng.integers(0, stack.shape[1] - n + 1)
            left = rng.integers(0, stack.shape[2] - n + 1)
            block = stack[:, top : top + n, left : left + n]
            if augment:
                block = np.rot90(block, k=int(rng.integers(0, 4)), axes=(1, 2))
                if rng.integers(0, 2):
                    block = block[:, :, ::-1]
            blocks[index] = block
        return blocks[:, :-1], blocks[:, -1:]


@dataclass
class TrainingConfig:
    """How to train. Defaults train the shipped CNN (see ``medfusion train --help``).

    :param iterations: optimiser steps (the convergence study wants >= 5000).
    :param batch_size: blocks per step.
    :param learning_rate: Adam's step size.
    :param weight_decay: Adam's L2 penalty.
    :param gradient_weight: weight of the L1 loss on image gradients (sharpness), added to MSE.
    :param validation_fraction: share of triplets held out for validation.
    :param validation_every: steps between validations.
    :param validation_blocks: number of fixed validation blocks.
    :param patience: validations without improvement before stopping; None never stops early.
    :param seed: seeds the train/validation split, block sampling, augmentation and (DBM) the RBM
        pre-training; the network's initial weights are seeded by ``FusionModel.create(seed=...)``.
    :param device: None/"auto" (CUDA when present), "cpu", "cuda".
    :param checkpoint: optional path; the best model so far is written there at every improvement.
    :param pretrain_epochs: DBM only: contrastive-divergence epochs per RBM layer.
    :param pretrain_blocks: DBM only: blocks used for pre-training.
    :param small_block_fraction: CNN only: share of the steps taken on blocks smaller than the
        model's (a power of two from 2 to n/2, drawn uniformly), cropped from the same images and
        targets. Block-mode fusion with a small n (the block-size study) runs the network on
        blocks too small for its context encoder and pyramid; without such steps that path is
        never trained and its rule is arbitrary. 0 keeps every step at n. (n is a power of two.)
        Those steps are listed in :attr:`TrainingHistory.small_block_iterations`.
    :param patch_size: side of the training and validation patches (a power of two); None: the
        model's block size. A DBM that predicts weights needs patches several of its blocks wide,
        since it cuts its blocks from the patch and joins their scores across it.
    :param structure_weight: weight of the SSIM-to-the-sources term of :func:`fusion_loss` (0: none).
    """

    iterations: int = 2000
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    gradient_weight: float = 0.5
    validation_fraction: float = 0.2
    validation_every: int = 100
    validation_blocks: int = 256
    patience: int | None = 10
    seed: int = 0
    device: str | None = None
    checkpoint: str | None = None
    pretrain_epochs: int = 5
    pretrain_blocks: int = 20000
    small_block_fraction: float = 0.0
    patch_size: int | None = None
    structure_weight: float = 0.0


@dataclass
class TrainingHistory:
    """Losses recorded during :func:`train` (lists are per iteration / per validation)."""

    train_loss: list[float] = field(default_factory=list)
    validation_iterations: list[int] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_iteration: int = 0
    best_validation_loss: float = math.inf
    stopped_early: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    pretraining: list[dict] = field(default_factory=list)
    #: Iterations taken on blocks smaller than the model's (``small_block_fraction``): their
    #: losses are on another scale, so curves and final losses use :meth:`full_size_losses`.
    small_block_iterations: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def full_size_losses(self) -> tuple[list[int], list[float]]:
        """``(iterations, losses)`` of the steps taken at the model's block size (1-based iterations)."""
        small = set(self.small_block_iterations)
        pairs = [(i, float(v)) for i, v in enumerate(self.train_loss, start=1) if i not in small]
        return [i for i, _ in pairs], [v for _, v in pairs]


#: Window of the structure term: Wang et al.'s SSIM (11 x 11 Gaussian, sigma 1.5), as pytorch-msssim computes it.
STRUCTURE_WINDOW = 11


def fusion_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    gradient_weight: float,
    inputs: torch.Tensor | None = None,
    structure_weight: float = 0.0,
) -> torch.Tensor:
    """MSE plus ``gradient_weight`` times the L1 distance of horizontal and vertical differences,
    plus ``structure_weight`` times ``1 - mean_k SSIM(prediction, input_k)``.

    The last term scores the fused block against its sources directly, as unsupervised fusion
    networks do (e.g. DeepFuse, Ram Prabhakar et al. 2017): the target stays the main term,
    and this one keeps the fusion from giving up the sources' structure wherever the target
    does (the saliency-blended targets score below a plain pyramid fusion on SSIM to the sources
    of CT pairs). SSIM is pytorch-msssim's (Gaussian 11 x 11 window, sigma 1.5, data range 1);
    blocks smaller than the window have no structure term.

    :param inputs: the K inputs ``(B, K, n, n)`` (needed when ``structure_weight`` is set).
    """
    loss = F.mse_loss(prediction, target)
    if gradient_weight:
        for axis in (-1, -2):
            loss = loss + gradient_weight * F.l1_loss(torch.diff(prediction, dim=axis), torch.diff(target, dim=axis))
    if structure_weight and inputs is not None and min(prediction.shape[-2:]) >= STRUCTURE_WINDOW:
        from pytorch_msssim import ssim

        count = inputs.shape[1]
        similarity = ssim(prediction.expand(-1, count, -1, -1).reshape(-1, 1, *prediction.shape[-2:]),
                          inputs.reshape(-1, 1, *inputs.shape[-2:]), data_range=1.0, win_size=STRUCTURE_WINDOW)
        loss = loss + structure_weight * (1.0 - similarity)
    return loss


def _check_config(config: TrainingConfig) -> None:
    for name in ("iterations", "batch_size", "validation_every", "validation_blocks"):
        check_int(getattr(config, name), f"training {name}")
    if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
        raise InputError(f"training learning_rate: expected a positive number, got {config.learning_rate!r}")
    if config.patience is not None:
        check_int(config.patience, "training patience (or None)")
    if not 0 <= config.validation_fraction < 1:
        raise InputError(f"training validation_fraction: expected [0, 1), got {config.validation_fraction!r}")
    if not (isinstance(config.structure_weight, (int, float)) and 0 <= config.structure_weight < math.inf):
        raise InputError(f"training structure_weight: expected a number >= 0, got {config.structure_weight!r}")
    if config.patch_size is not None:
        size = check_int(config.patch_size, "training patch_size (or None)", minimum=2)
        if size & (size - 1):
            raise InputError(f"training patch_size: expected a power of two, got {size}")
    if not isinstance(config.small_block_fraction, (int, float)) or not 0 <= config.small_block_fraction < 1:
        raise InputError(f"training small_block_fraction: expected [0, 1), got {config.small_block_fraction!r}")


def train(
    model: "FusionModel",  # noqa: F821 - imported lazily to avoid a cycle
    dataset: TripletDataset,
    config: TrainingConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> TrainingHistory:
    """Fit ``model`` to ``dataset`` in place and return the loss history.

    On cancellation (``cancel.is_set()``) the model's weights are put back as they
    were before the call and :class:`~MedFusionLib.engine.rbm.TrainingCancelled` is raised.

    :param model: a :class:`~MedFusionLib.engine.model.FusionModel`.
    :param dataset: training triplets; a share is held out for validation.
    :param config: a :class:`TrainingConfig` (defaults if None).
    :param progress: ``progress(fraction, message)``.
    :param cancel: an object with ``is_set()`` (e.g. ``threading.Event``).
    """
    config = config or TrainingConfig()
    _check_config(config)
    if dataset.n_inputs != model.n_inputs:
        raise InputError(f"dataset: triplets have {dataset.n_inputs} inputs, the model fuses {model.n_inputs}")
    n = training_patch_size(model, config, dataset)
    ranks = distributed.current()  # under torchrun: this process's rank (see .distributed)
    device = distributed.training_device(resolve_device(config.device))
    train_set, validation_set = dataset.split(config.validation_fraction, config.seed)
    # Each rank draws its own blocks; a single process keeps the stream it always had.
    rng = np.random.default_rng([config.seed, ranks.rank] if ranks.distributed else config.seed)
    torch.manual_seed(config.seed)
    original_network = copy.deepcopy(model.network)
    history = TrainingHistory(device=str(device))
    start = time.perf_counter()

    def report(fraction: float, message: str) -> None:
        if cancel is not None and cancel.is_set():
            raise TrainingCancelled("training cancelled")
        if progress is not None:
            progress(fraction, message)

    try:
        if model.family == "dbm":
            _pretrain_dbm(model, train_set, config, rng, history, report)
        network = model.network.to(device).train()
        # Under torchrun the gradients are averaged over the ranks at every step (DDP starts every rank
        # from rank 0's weights). Small blocks leave the context encoder unused, on some ranks only.
        trainer = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True,
        ) if ranks.distributed else network
        optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        validation = None
        if validation_set is not None and ranks.main:  # rank 0 alone validates
            val_inputs, val_targets = validation_set.sample_blocks(
                n, config.validation_blocks, np.random.default_rng(config.seed + 1), augment=False
            )
            validation = (torch.from_numpy(val_inputs).to(device), torch.from_numpy(val_targets).to(device))
        best_state = copy.deepcopy(network.state_dict())
        stale = 0
        # Progress (and a cancel check) about every 1 % as well as at validations, so a long
        # validation interval neither freezes a progress bar nor delays a cancel.
        report_every = max(1, config.iterations // 100)
        small_sizes = [2**i for i in range(1, n.bit_length() - 1)] if model.family == "cnn" else []
        mix_small = bool(small_sizes) and config.small_block_fraction > 0
        for iteration in range(1, config.iterations + 1):
            size = n
            if mix_small and rng.random() < config.small_block_fraction:  # no draw at 0: same stream as before
                size = int(rng.choice(small_sizes))
                history.small_block_iterations.append(iteration)
            inputs, targets = train_set.sample_blocks(size, config.batch_size, rng)
            inputs, targets = torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)
            optimiser.zero_grad(set_to_none=True)
            loss = fusion_loss(trainer(inputs), targets, config.gradient_weight, inputs, config.structure_weight)
            loss.backward()
            optimiser.step()
            history.train_loss.append(float(loss.detach()))
            validating = iteration % config.validation_every == 0 or iteration == config.iterations
            if not validating and iteration % report_every == 0:
                report(iteration / config.iterations, f"iteration {iteration}: loss {history.train_loss[-1]:.5f}")
            if validating:
                stop = False
                if ranks.main:
                    if validation is not None:
                        network.eval()
                        with torch.no_grad():
                            val_loss = float(fusion_loss(network(validation[0]), validation[1], config.gradient_weight,
                                                         validation[0], config.structure_weight))
                        network.train()
                    else:
                        val_loss = float(np.mean(history.train_loss[-config.validation_every :]))
                    history.validation_iterations.append(iteration)
                    history.validation_loss.append(val_loss)
                    if val_loss < history.best_validation_loss:
                        history.best_validation_loss = val_loss
                        history.best_iteration = iteration
                        best_state = copy.deepcopy(network.state_dict())
                        stale = 0
                        if config.checkpoint:
                            model.save(config.checkpoint)  # model.network is the network being trained
                    else:
                        stale += 1
                    report(iteration / config.iterations,
                           f"iteration {iteration}: loss {loss.item():.5f}, validation {val_loss:.5f}")
                    stop = config.patience is not None and stale >= config.patience
                else:
                    report(iteration / config.iterations, f"iteration {iteration}: loss {loss.item():.5f}")
                if distributed.from_main(stop, device):  # rank 0 decides for every rank
                    history.stopped_early = True
                    break
        network.load_state_dict(best_state)
        network.eval()
        distributed.wait_for_all()  # a rank that failed fails the others here at the latest: no model is written
    except BaseException:
        model.network = original_network  # a cancelled or failed run leaves the model as it was
        raise
    history.seconds = time.perf_counter() - start
    model.info.training = {**model.info.training, **{k: v for k, v in asdict(config).items() if k != "checkpoint"},
                           "iterations_run": len(history.train_loss), "best_iteration": history.best_iteration,
                           "best_validation_loss": history.best_validation_loss, "seconds": round(history.seconds, 1),
                           "training_triplets": len(train_set)}
    return history


def training_patch_size(model: "FusionModel", config: TrainingConfig, dataset: TripletDataset) -> int:  # noqa: F821
    """Side of the training patches: ``config.patch_size``, else the model's block size, except for a
    DBM that predicts weights: the largest power of two up to 64 that the images hold (at least its
    block size), so each patch spans several of its blocks and the scores' joins are trained too."""
    n = model.block_size
    cuts_blocks = model.family == "dbm" and getattr(model.network, "has_contributions", False)
    if config.patch_size is not None:
        if model.family == "dbm" and not cuts_blocks and config.patch_size != n:
            raise InputError(f"training patch_size: this DBM predicts fused {n}x{n} blocks, so it trains on "
                             f"blocks of {n}; got {config.patch_size}")
        if cuts_blocks and config.patch_size < n:
            raise InputError(f"training patch_size: {config.patch_size} is smaller than the DBM's {n}x{n} blocks")
        if config.patch_size > dataset.min_side():
            raise InputError(f"training patch_size: {config.patch_size} is larger than the smallest training "
                             f"image side {dataset.min_side()}")
        return config.patch_size
    if not cuts_blocks:
        return n
    side = min(64, dataset.min_side())
    return max(n, 1 << (side.bit_length() - 1))


def _pretrain_dbm(model, train_set: TripletDataset, config: TrainingConfig, rng: np.random.Generator,
                  history: TrainingHistory, report: Callable[[float, str], None]) -> None:
    """Greedy CD pre-training of the RBM stack on flattened input blocks, then unroll into the model."""
    from .networks import BlockDBMNet

    network = model.network
    inputs, _ = train_set.sample_blocks(model.block_size, config.pretrain_blocks, rng)
    data = torch.from_numpy(inputs.reshape(inputs.shape[0], -1))
    generator = torch.Generator().manual_seed(config.seed)
    rbms, layers = pretrain_stack(
        data, list(network.layer_sizes), epochs=config.pretrain_epochs, batch_size=64, generator=generator,
        progress=lambda fraction, message: report(0.0, f"pre-training: {message}"),
    )
    history.pretraining = layers
    model.network = BlockDBMNet(**network.config(), rbms=rbms)


def save_history(history: TrainingHistory, path: str | Path) -> None:
    """Write the history as JSON (atomically)."""
    import json

    from ..io import atomic_output

    with atomic_output(Path(path), overwrite=True) as temporary:
        Path(temporary).write_text(json.dumps(history.to_dict()))
