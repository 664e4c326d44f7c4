"""The tiny synthetic study the experiment tests run (seconds on a CPU), and dotted overrides."""

from __future__ import annotations

import json
from typing import Any

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "dataset": {"name": "synthetic-gaussian"},
    "model": {"name": "relu_mlp", "kwargs": {"input_shape": [1, 8, 8], "hidden": [16], "num_classes": 2}},
    "training": {
        "epochs": 1,
        "batch_size": 64,
        "optimizer": {"name": "adam", "lr": 0.01},
        "tensorboard": False,
        "quiet": True,
        "data": {"val_subset": 64},
    },
    "sweep": {"lambdas": [0, 1]},
    "evaluation": {"n": 24, "chunk_size": 8, "gallery": 2, "batch_size": 12},
    "attacks": {"names": ["deepfool", "ddn"], "budget": "fast", "steps": 10},
    "report": {"n_bootstrap": 100, "linear_sanity": True, "figures": False},
}


def with_changes(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of the config ``base`` with ``changes`` applied: ``"evaluation.n": 5`` sets
    ``cfg["evaluation"]["n"]`` (creating missing sections)."""
    cfg = json.loads(json.dumps(base))
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return cfg
