"""What the MedFusion module offers and accepts: the GUI's choice lists and the logic's option values.

One importable place, read by the widget (``MedFusion.py``), the logic and the static tests
alike. Plain Python only -- no Slicer, NumPy, PyTorch or MedFusionLib import -- because the
widget imports it while Slicer starts (every module is imported then), long before the
heavy packages are checked or installed. A test keeps each list equal to what MedFusionLib
implements (baselines, denoising filters, registration transforms, network families).
"""

from __future__ import annotations

from typing import Optional

# ---------------------------------------------------------------- the GUI's choice lists

#: Fusion methods: the shipped models (``MedFusionLib.fusion.SHIPPED_MODELS``: the default CNN and paper
#: 000's DBM), a model file, and MedFusionLib's baselines (``MedFusionLib.baselines.BASELINES``).
METHOD_CHOICES = ["default", "dbm", "model file", "average", "maximum", "laplacian", "guided_filter", "wavelet"]
MODALITY_CHOICES = ["auto", "CT", "MRI", "PET", "SPECT"]
BLOCK_SIZE_CHOICES = ["whole slice", "16", "32", "64", "128", "256"]
SLICE_AXIS_CHOICES = ["K", "J", "I"]  # array axis 0, 1, 2 (K is axial for an axial acquisition)
DEVICE_CHOICES = ["auto", "cpu", "gpu"]
REGISTRATION_CHOICES = ["none", "rigid", "affine"]
DENOISE_CHOICES = ["none", "curvature_flow", "gaussian", "median", "bilateral"]
#: Train section: where the training cases come from, the model families and the training block
#: sizes ("auto": the family's default, reduced to fit the slices).
TRAINING_SOURCE_CHOICES = ["scene volumes", "folder"]
TRAINING_FAMILY_CHOICES = ["cnn", "dbm"]
TRAINING_BLOCK_SIZE_CHOICES = ["auto", "8", "16", "32", "64", "128"]

# ---------------------------------------------------------------- what the logic accepts

#: Metrics plotted against the slice index by default: edge transfer, information transfer, structure.
DEFAULT_PLOT_METRICS: tuple[str, ...] = ("QABF", "MI", "SSIM_S")

#: Device names accepted by the logic (the GUI's choices) and what MedFusionLib is asked for.
DEVICES: dict[str, Optional[str]] = {"auto": None, "cpu": "cpu", "gpu": "cuda", "cuda": "cuda"}

#: Model families the logic trains: the multi-scale weight CNN (fuses any number of inputs) and the
#: RBM-initialised block network of the 2020 paper (fuses exactly as many inputs as it was trained with).
TRAINING_FAMILIES: tuple[str, ...] = tuple(TRAINING_FAMILY_CHOICES)
#: Optimiser steps of a training run unless asked otherwise: a few hundred, so that a run takes about a
#: minute on a CPU (the shipped default model took 8000; more iterations fit the data better).
DEFAULT_TRAINING_ITERATIONS = 300
#: Training block side per family when none is given (reduced to fit smaller slices): CNN blocks of 32
#: train twice as fast as the shipped recipe's 64 on a CPU; the DBM's blocks are its fixed input size.
DEFAULT_TRAINING_BLOCK_SIZES: dict[str, int] = {"cnn": 32, "dbm": 8}
