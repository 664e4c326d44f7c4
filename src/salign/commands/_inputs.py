"""The model and data options shared by ``salign analyze`` and ``salign attack``.

The model comes from :func:`salign.models.load_spec` (``--model SPEC --weights FILE``, or the
positional checkpoint of earlier versions); the data from :func:`salign.data.load` (a dataset
name) or :func:`salign.data.read_tensor_file` (``--data FILE``, where ``y`` may be missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from salign.errors import ConfigError

MODEL_HELP = (
    "The model: a salign checkpoint (.safetensors), a torch.export archive (.pt2), file.py:factory "
    "or package.module:factory (imports and runs that code: name only code you trust), "
    "torchvision/<arch>, timm/<arch>, or a salign model name."
)
WEIGHTS_HELP = (
    "State dict (.safetensors, or .pt/.pth read with weights_only) for a factory, torchvision/timm "
    "or registry --model."
)
DATA_HELP = (
    "Dataset name (see `salign data list`) or a file (.npz, .safetensors, .pt) holding x "
    "(N,C,H,W in [0,1], or uint8) and optionally y."
)
CHECKPOINT_HELP = "Model checkpoint or spec (same as --model; kept for compatibility)."

#: The parameters themselves, shared by both commands (typer reads them as defaults).
CHECKPOINT_ARG: Any = typer.Argument(None, help=CHECKPOINT_HELP, show_default=False)
MODEL_OPT: Any = typer.Option(None, "--model", help=MODEL_HELP, show_default=False)
WEIGHTS_OPT: Any = typer.Option(None, "--weights", help=WEIGHTS_HELP, show_default=False)
DATA_OPT: Any = typer.Option("mnist", "--data", help=DATA_HELP)


def resolve_model(checkpoint: str | None, model: str | None, weights: Path | None, device: str) -> Any:
    """The model of the positional checkpoint or ``--model`` (exactly one), on ``device``."""
    import salign.models

    if checkpoint is not None and model is not None:
        raise ConfigError("give the model once: either the positional CHECKPOINT or --model SPEC")
    spec = model if model is not None else checkpoint
    if spec is None:
        raise ConfigError("no model given: pass --model SPEC (a checkpoint, model.pt2, file.py:factory, ...)")
    return salign.models.load_spec(spec, weights=weights, map_location=device)


def resolve_data(data: str, split: str, data_dir: Path | None) -> tuple[Any, Any]:
    """``(x, y)`` of a dataset name or a data file; ``y`` is None for a file without labels."""
    import salign.data

    if data not in salign.data.DATASETS and salign.data.is_tensor_file(data):
        if data_dir is not None:
            raise ConfigError(f"--data-dir does not apply to the data file {data}")
        return salign.data.read_tensor_file(data)
    return salign.data.load(data, split, data_dir=data_dir)
