"""A trained fusion model: network + metadata, with ``fit``, ``fuse``, ``save`` and ``load``.

Model files are written by ``torch.save`` and read only with
``torch.load(..., weights_only=True)``: a file holds plain tensors, numbers and
strings, so loading one can never run code hidden in it (a pickle that tries to is
refused by torch before anything executes).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import __version__
from ..errors import InputError, first_line
from ..validation import check_int
from .blocks import default_stride, fuse_blockwise, validate_block_size, validate_stride
from .devices import inference_context, resolve_device
from .networks import NETWORKS, BlockDBMNet, PyramidWeightCNN

#: Format tag and version of model files; bump the version when the layout changes.
MODEL_FORMAT = "medfusion-model"
MODEL_FORMAT_VERSION = 1


@dataclass
class ModelInfo:
    """What a model is and how it was made (saved beside the weights).

    :param family: ``"cnn"`` or ``"dbm"``.
    :param config: the network's constructor arguments.
    :param block_size: n, the block (training patch) size.
    :param modalities: what each input is expected to be, e.g. ``["CT", "MRI"]`` (informative).
    :param training: the recipe: command, data, seed, iterations, loss, ... (informative).
    """

    family: str
    config: dict[str, Any]
    block_size: int
    modalities: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = MODEL_FORMAT_VERSION
    medfusion_version: str = __version__

    @property
    def n_inputs(self) -> int:
        return int(self.config["n_inputs"])


class FusionModel:
    """A fusion network with its metadata.

    Inputs are K co-registered 2D images with intensities already standardised to
    [0, 1] (see :mod:`MedFusionLib.fusion` for the user-facing API that does that).

    :param network: a :class:`PyramidWeightCNN` or :class:`BlockDBMNet`.
    :param info: its metadata.
    """

    def __init__(self, network: torch.nn.Module, info: ModelInfo) -> None:
        self.network = network
        self.info = info

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(
        cls, family: str = "cnn", n_inputs: int = 2, block_size: int = 64, seed: int | None = None, **config: Any
    ) -> "FusionModel":
        """A new, untrained model.

        :param family: ``"cnn"`` (multi-scale weight CNN) or ``"dbm"`` (RBM-initialised block network).
        :param n_inputs: K, the number of inputs fused together.
        :param block_size: n, the training block size (the DBM's fixed block size).
        :param seed: seed of the initial weights (torch's global generator is left as it was);
            None draws them from torch's global generator. With a seed, the same creation and
            ``fit`` with the same :class:`~MedFusionLib.engine.training.TrainingConfig` seed give
            bit-identical weights on the CPU.
        :param config: further network arguments (``levels``, ``width``, ``hidden`` for the CNN;
            ``layer_sizes``, ``predicts``, ``levels`` for the DBM).
        """
        if family not in NETWORKS:
            raise InputError(f"family: expected one of {sorted(NETWORKS)}, got {family!r}")
        n_inputs = check_int(n_inputs, "n_inputs", minimum=2)
        block_size = validate_block_size(block_size)
        def build() -> torch.nn.Module:
            if family == "dbm":
                return BlockDBMNet(n_inputs=n_inputs, block_size=block_size, **config)
            return PyramidWeightCNN(n_inputs=n_inputs, **config)

        if seed is None:
            network = build()
        else:
            with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's generator
                torch.manual_seed(check_int(seed, "seed", minimum=0))
                network = build()
        return cls(network, ModelInfo(family=family, config=network.config(), block_size=block_size))

    @property
    def family(self) -> str:
        return self.info.family

    @property
    def n_inputs(self) -> int:
        return self.info.n_inputs

    @property
    def block_size(self) -> int:
        return self.info.block_size

    def accepts(self, count: int) -> bool:
        """Whether the model can fuse ``count`` inputs: the CNN's shared weights take any K >= 2."""
        return count == self.n_inputs or (self.family == "cnn" and count >= 2)

    def check_contributions(self) -> None:
        """Refuse a contribution map where the model has none: a DBM of the first form predicts fused
        values, not weights of its inputs.

        :raises InputError: the model has no fusion weights.
        """
        if not getattr(self.network, "has_contributions", True):
            raise InputError(
                f"contributions: this {self.family} model predicts fused values, not weights of its inputs, "
                "so it has no contribution map; use the default (CNN) model, a DBM trained by "
                "'medfusion train --recipe dbm', or a baseline"
            )

    def __repr__(self) -> str:
        return f"FusionModel(family={self.family!r}, n_inputs={self.n_inputs}, block_size={self.block_size})"

    # ------------------------------------------------------------------ fusion

    def fuse_tensor(
        self,
        inputs: torch.Tensor,
        block_size: int | None = None,
        stride: int | None = None,
        batch_blocks: int | None = 4096,
        contributions: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Fuse a batch ``(B, K, H, W)`` on the tensor's device; returns ``(B, 1, H, W)``.

        The CNN is fully convolutional: with ``block_size=None`` it fuses each image in
        one pass; with a block size it fuses overlapping n x n blocks and averages them
        (:func:`~MedFusionLib.engine.blocks.fuse_blockwise`) -- not the same numbers,
        since each block then sees only its own context, which is what the block-size
        study measures. The DBM always works on blocks of its own size: one that predicts
        weights cuts them from the whole image itself (see :class:`.networks.BlockDBMNet`);
        one of the first form predicts fused blocks, joined here with a Hann window (see
        :func:`~MedFusionLib.engine.blocks.block_window`), which hides the seams a plain
        average left.

        :param inputs: standardised inputs, ``(B, K, H, W)``.
        :param block_size: None (CNN: whole image) or n = 2^i.
        :param stride: block step (default n / 2).
        :param batch_blocks: blocks per forward pass in block mode (bounds memory).
        :param contributions: also return each input's share of the fused value, ``(B, K, H, W)``
            (see :mod:`MedFusionLib.contributions`; in block mode the blocks' maps are overlap-averaged like
            the fused blocks). The CNN and a DBM that predicts weights have one; a DBM of the first
            form predicts values, not input weights.
        :returns: the fused batch, or ``(fused, contributions)``.
        """
        if inputs.ndim != 4:
            raise InputError(f"inputs: expected a (batch, images, height, width) tensor, got shape {tuple(inputs.shape)}")
        if not self.accepts(inputs.shape[1]):
            raise InputError(f"inputs: this model fuses {self.n_inputs} images, got {inputs.shape[1]}")
        if contributions:
            self.check_contributions()
        if self.family == "dbm":
            if block_size not in (None, self.block_size):
                raise InputError(
                    f"block_size: this DBM model was trained on {self.block_size}x{self.block_size} blocks, "
                    f"got {block_size}; train a model for that block size"
                )
            # A DBM that predicts weights cuts its own blocks from the whole image; one of the first
            # form fuses overlapping blocks of its size, joined below.
            if self.network.has_contributions and stride is not None:
                raise InputError(f"stride: this DBM cuts its own {self.block_size}x{self.block_size} blocks at "
                                 f"stride {max(1, self.block_size // 2)}; leave stride unset")
            block_size = None if self.network.has_contributions else self.block_size
        if block_size is None:
            if stride is not None:
                raise InputError("stride: a block step needs block_size (the whole image is fused in one pass)")
            return self.network.fuse_with_contributions(inputs) if contributions else self.network(inputs)
        block_size = validate_block_size(block_size, tuple(inputs.shape[-2:]))
        stride = validate_stride(stride if stride is not None else default_stride(block_size), block_size)
        # The DBM's blocks are joined with a raised-cosine (Hann) window: a plain average of blocks that
        # each predict their own values left a grid at the block stride (block-grid index 1.18 against
        # the Laplacian pyramid's 1.07 on phantoms; 1.08 with the window, and Q^AB/F up 0.015).
        blending = "hann" if self.family == "dbm" else "uniform"
        if not contributions:
            return fuse_blockwise(inputs, self.network, block_size, stride, batch_blocks=batch_blocks,
                                  weights=blending)
        both = fuse_blockwise(inputs, lambda blocks: torch.cat(self.network.fuse_with_contributions(blocks), dim=1),
                              block_size, stride, batch_blocks=batch_blocks, weights=blending)
        return both[:, :1], both[:, 1:]

    def fuse(
        self,
        images: Sequence[np.ndarray],
        block_size: int | None = None,
        stride: int | None = None,
        device: str | torch.device | None = None,
        contributions: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Fuse K standardised 2D images (``float`` in [0, 1], same shape) into one ``float32`` image.

        :param images: the K inputs.
        :param block_size: see :meth:`fuse_tensor`.
        :param stride: see :meth:`fuse_tensor`.
        :param device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        :param contributions: also return the ``(K, H, W)`` contribution map (see :meth:`fuse_tensor`).
        """
        stack = np.stack([np.asarray(image, dtype=np.float32) for image in images])
        target_device = resolve_device(device)
        self.to(target_device)
        with inference_context():
            out = self.fuse_tensor(torch.from_numpy(stack)[None].to(target_device), block_size, stride,
                                   contributions=contributions)
        if contributions:
            return out[0][0, 0].float().cpu().numpy(), out[1][0].float().cpu().numpy()
        return out[0, 0].float().cpu().numpy()

    def to(self, device: torch.device) -> "FusionModel":
        """Move the weights to ``device`` (nothing to do, and nothing walked, when they are there already)."""
        first = next(self.network.parameters(), None)
        if first is None or first.device != device:
            self.network.to(device)
        return self

    # ------------------------------------------------------------------ training

    def fit(self, dataset: Any, config: Any = None, progress: Any = None, cancel: Any = None) -> Any:
        """Train on a :class:`~MedFusionLib.engine.training.TripletDataset` (see :func:`.training.train`)."""
        from .training import train

        return train(self, dataset, config, progress=progress, cancel=cancel)

    # ------------------------------------------------------------------ persistence

    def save(
        self, path: str | os.PathLike, overwrite: bool = True, protected_paths: Sequence[str | os.PathLike] = ()
    ) -> Path:
        """Write the model atomically (temporary file in the same folder, then rename).

        :param path: destination, conventionally ``*.pt``.
        :param overwrite: replace an existing file.
        :param protected_paths: files the model may never replace (e.g. the training inputs).
        """
        from ..io import atomic_output

        payload = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "info": json.dumps(asdict(self.info)),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()},
        }
        path = Path(path)
        with atomic_output(path, overwrite=overwrite, protected_paths=protected_paths) as temporary:
            torch.save(payload, temporary)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = "cpu") -> "FusionModel":
        """Read a model file written by :meth:`save`; refuses anything else with a clear message.

        :param path: the ``.pt`` file.
        :param device: where to put the weights.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"model {path}: no such file")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
            raise InputError(
                f"model {path}: not a readable MedFusion model file ({first_line(error)[:200]})"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            raise InputError(f"model {path}: not a MedFusion model file (no '{MODEL_FORMAT}' tag)")
        version = payload.get("format_version")
        if version != MODEL_FORMAT_VERSION:
            raise InputError(
                f"model {path}: format version {version!r}, this MedFusion reads version {MODEL_FORMAT_VERSION}"
            )
        try:
            info = ModelInfo(**json.loads(payload["info"]))
            if info.family not in NETWORKS:
                raise ValueError(f"unknown model family {info.family!r}")
            config = dict(info.config)
            if info.family == "cnn":
                # Files written before the option existed were trained and published without it.
                config.setdefault("clamp_to_inputs", False)
            else:  # DBM files written before the weights form predict fused values
                config.setdefault("predicts", "values")
            network = NETWORKS[info.family](**config)
            network.load_state_dict(payload["state_dict"])
        except Exception as error:
            raise InputError(f"model {path}: inconsistent model file ({error})") from None
        network.to(resolve_device(device)).eval()
        return cls(network, info)
