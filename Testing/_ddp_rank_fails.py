"""``medfusion`` under torchrun with rank 1 failing at its 5th training step (Testing/test_torchrun.py)."""

import os
import sys

import MedFusionLib.engine.training as training
from MedFusionLib.cli import main

if os.environ.get("RANK") == "1":
    original, steps = training.fusion_loss, [0]

    def failing(*args, **kwargs):
        steps[0] += 1
        if steps[0] == 5:
            raise RuntimeError("rank 1 fails on purpose")
        return original(*args, **kwargs)

    training.fusion_loss = failing
sys.exit(main(sys.argv[1:]))
