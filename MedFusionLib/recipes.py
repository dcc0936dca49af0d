"""Training recipes: the exact, documented commands that make the shipped models.

``medfusion train --recipe default -o model.pt`` runs :func:`train_recipe` with
:data:`RECIPES["default"]`: phantom triplets generated in code (see
:mod:`MedFusionLib.data.targets` for how the targets are made), a light
multi-scale weight CNN, seeded training on the CPU. Same recipe, same seed, same
machine type -> the same weights.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .data.targets import MODALITY_PAIRS, phantom_cases
from .engine import distributed
from .engine.model import FusionModel
from .engine.training import TrainingConfig, TrainingHistory, TripletDataset, save_history
from .errors import InputError
from .progress import ProgressCallback


RECIPES: dict[str, dict[str, Any]] = {
    "default": {
        "description": "The shipped default model: 2-input multi-scale weight CNN trained on phantom triplets.",
        "family": "cnn",
        "n_inputs": 2,
        "block_size": 64,
        "network": {"levels": 4, "width": 8, "hidden": 16},
        "data": {"count_per_pair": 12, "shape": (256, 256), "pairs": MODALITY_PAIRS, "seed": 0, "target_sigma": 4.0},
        "training": TrainingConfig(
            iterations=8000, batch_size=16, learning_rate=3e-3, gradient_weight=0.5,
            validation_every=100, validation_blocks=256, patience=20, seed=0, device="cpu",
            small_block_fraction=0.2,
        ),
        "modalities": ["CT or MRI", "MRI, PET or SPECT"],
    },
    "dbm": {
        "description": "The shipped DBM model (paper 000): stacked RBMs pre-trained by CD-1 on 8x8 blocks, "
                       "fine-tuned to score the inputs' pyramid levels block by block.",
        "family": "dbm",
        "n_inputs": 2,
        "block_size": 8,
        "network": {"layer_sizes": (128, 64), "predicts": "weights", "levels": 4},
        "data": {"count_per_pair": 6, "shape": (256, 256), "pairs": MODALITY_PAIRS, "seed": 0},
        "training": TrainingConfig(
            iterations=3000, batch_size=16, learning_rate=3e-3, gradient_weight=0.5, structure_weight=0.25,
            validation_every=100, validation_blocks=128, patience=20, seed=0, device="cpu",
            pretrain_epochs=5, pretrain_blocks=20000,  # patches: 64 px (training_patch_size; smaller images: less)
        ),
        "modalities": ["CT or MRI", "MRI, PET or SPECT"],
    },
    "smoke": {
        "description": "A seconds-long recipe for tests and smoke runs (not for use).",
        "family": "cnn",
        "n_inputs": 2,
        "block_size": 32,
        "network": {"levels": 3, "width": 4, "hidden": 4},
        "data": {"count_per_pair": 1, "shape": (64, 64), "pairs": MODALITY_PAIRS[:2], "seed": 0},
        "training": TrainingConfig(iterations=20, batch_size=4, validation_every=10, seed=0, device="cpu"),
        "modalities": ["CT", "MRI"],
    },
}


def recipe(name: str) -> dict[str, Any]:
    """A copy of a named recipe (edit it freely)."""
    if name not in RECIPES:
        raise InputError(f"recipe: unknown {name!r}; choose from {', '.join(RECIPES)}")
    return {"name": name, **copy.deepcopy(RECIPES[name])}


def recipe_dataset(spec: dict[str, Any]) -> TripletDataset:
    """The phantom triplets a recipe trains on."""
    data = spec["data"]
    cases = phantom_cases(data["count_per_pair"], tuple(data["shape"]), data["pairs"], data["seed"],
                          data.get("target_sigma", 4.0))
    return TripletDataset([case.triplet() for case in cases])


def train_recipe(
    name_or_spec: str | dict[str, Any],
    output: str | Path | None = None,
    progress: ProgressCallback | None = None,
    cancel: Any = None,
    dataset: TripletDataset | None = None,
) -> tuple[FusionModel, TrainingHistory]:
    """Train a model by recipe and optionally save it (atomically) with its history next to it.

    :param name_or_spec: a :data:`RECIPES` name or a recipe dict.
    :param output: model path (``.pt``); the history goes to ``<output>.history.json``.
    :param progress: ``progress(fraction, message)``.
    :param cancel: an object with ``is_set()``; cancelling leaves no file behind.
    :param dataset: train on these triplets instead of the recipe's phantoms.
    """
    spec = recipe(name_or_spec) if isinstance(name_or_spec, str) else copy.deepcopy(name_or_spec)
    start = time.perf_counter()
    user_data = dataset is not None
    if dataset is None:
        if progress is not None:
            progress(0.0, "making phantom training triplets")
        dataset = recipe_dataset(spec)
    torch.manual_seed(spec["training"].seed)
    model = FusionModel.create(spec["family"], spec["n_inputs"], spec["block_size"], **spec["network"])
    history = model.fit(dataset, spec["training"], progress=progress, cancel=cancel)
    model.info.modalities = list(spec.get("modalities", []))
    data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.get("data", {}).items()}
    model.info.training.update(
        {
            "recipe": spec.get("name", "custom"),
            "command": spec.get("command", f"medfusion train --recipe {spec.get('name', 'default')} --output <file>"),
            "data": "user triplets" if user_data else data,
            "targets": "MedFusionLib.data.targets.saliency_blend (saliency-masked multiresolution blending)",
            "torch": torch.__version__,
            "total_seconds": round(time.perf_counter() - start, 1),
        }
    )
    if output is not None and distributed.current().main:  # under torchrun, rank 0 writes the files
        model.save(output)
        save_history(history, f"{output}.history.json")
    return model, history


def training_summary(history: TrainingHistory) -> dict[str, Any]:
    """The headline numbers of a history (for printing)."""
    data = asdict(history)
    return {
        "iterations": len(data["train_loss"]),
        "best_iteration": data["best_iteration"],
        "best_validation_loss": data["best_validation_loss"],
        "stopped_early": data["stopped_early"],
        "seconds": round(data["seconds"], 1),
        "device": data["device"],
    }
