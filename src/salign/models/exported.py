"""``torch.export`` archives (``.pt2``) as salign models, loaded without unpickling code.

A ``.pt2`` written by ``torch.export.save`` holds the traced graph as JSON (torch operators only)
and the weights as raw tensor bytes. ``torch.export.load`` can also unpickle things (tensor
subclasses, custom objects, the sample inputs as a fallback) and an archive can carry compiled
native code (AOTInductor); a crafted file could use either to run code. So
:func:`load_exported` first reads the archive's JSON index and refuses any pickled or compiled
entry, then calls ``torch.export.load`` with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` so that every
``torch.load`` inside it is a weights-only load.

Export the model in eval mode (``model.eval()`` first: BatchNorm and dropout are frozen into the
graph) with a dynamic batch dimension::

    ep = torch.export.export(model.eval(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, "model.pt2")

An archive exported with a fixed batch size still works: :class:`ExportedModel` runs it chunk
by chunk, padding the last chunk.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from salign.errors import CheckpointError, InputError, describe_error
from salign.models.weights import looks_like, sniff_format

#: Layout of torch.export's archive (torch/export/pt2_archive/constants.py), relative to its root.
_WEIGHTS_DIR = "data/weights/"
_CONSTANTS_DIR = "data/constants/"
_TENSOR_CONSTANT_PREFIX = "tensor_"
_COMPILED_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia")
_MODEL_JSON = "models/model.json"


class ExportedModel(nn.Module):
    """The module of an exported program, taking NCHW inputs of any batch size, returning logits.

    ``train()``/``eval()`` only set this wrapper's flag: the exported graph's behaviour (BatchNorm
    statistics, dropout) was fixed when it was exported.
    """

    def __init__(self, module: nn.Module, input_shape: tuple[int | None, ...], source: str = "") -> None:
        super().__init__()
        self.exported = module
        #: The input shape the graph was exported for; None marks a dynamic dimension.
        self.input_shape = input_shape
        self.source = source

    def train(self, mode: bool = True) -> ExportedModel:
        """Set the flag only (an exported graph cannot switch modes; torch raises if asked)."""
        self.training = mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        fixed = self.input_shape
        if x.ndim != len(fixed) or any(
            f is not None and f != s for f, s in zip(fixed[1:], x.shape[1:], strict=True)
        ):
            shown = tuple("N" if f is None else f for f in fixed)
            raise InputError(
                f"the exported model {self.source} takes inputs of shape {shown}, got {tuple(x.shape)}"
            )
        batch = fixed[0]
        if batch is None or x.shape[0] == batch:
            return self.exported(x)
        outputs = []
        for start in range(0, x.shape[0], batch):
            chunk = x[start : start + batch]
            pad = batch - chunk.shape[0]
            if pad:
                chunk = torch.cat([chunk, chunk.new_zeros((pad, *chunk.shape[1:]))])
            out = self.exported(chunk)
            outputs.append(out[: batch - pad] if pad else out)
        return torch.cat(outputs)


def load_exported(path: str | os.PathLike[str]) -> ExportedModel:
    """The model in a ``torch.export`` archive, checked to contain no pickled or compiled code.

    Raises:
        CheckpointError: not a torch.export archive (what it looks like instead), an archive with
            pickled entries or compiled code, or a program that does not take one input tensor.
    """
    p = Path(path)
    _check_archive(p)
    with _weights_only_loads():
        try:
            program = torch.export.load(p)
        except Exception as exc:  # an archive torch cannot read: RuntimeError, KeyError, ...
            raise CheckpointError(f"{p}: torch.export.load failed: {describe_error(exc)}") from exc
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise CheckpointError(
            f"{p} was exported with {len(user_inputs)} inputs ({', '.join(map(str, user_inputs))}); "
            "a salign model takes one batch of images: export model(x) with one tensor"
        )
    shape = _input_shape(program, str(user_inputs[0]))
    return ExportedModel(program.module(), shape, source=str(p))


def _input_shape(program: Any, name: str) -> tuple[int | None, ...]:
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == name:
            val = node.meta.get("val")
            if isinstance(val, Tensor):
                return tuple(d if isinstance(d, int) else None for d in val.shape)
    return ()


def _check_archive(p: Path) -> None:
    kind = sniff_format(p)
    if kind != "pt2":
        hint = looks_like(kind) or "is not a zip archive written by torch.export.save"
        raise CheckpointError(f"{p} is not a torch.export archive: it {hint}")
    with zipfile.ZipFile(p) as zf:
        names = zf.namelist()
        fmt = [n for n in names if n.rsplit("/", 1)[-1] == "archive_format"]
        root = fmt[0][: -len("archive_format")]
        outside = [n for n in names if not n.startswith(root)]
        rel = {n[len(root) :] for n in names if n.startswith(root)}
        refused: list[str] = [f"{n} (outside the archive root)" for n in outside[:3]]
        refused += [f"{r} (compiled code)" for r in sorted(rel) if r.startswith(_COMPILED_DIRS)][:3]
        if _MODEL_JSON not in rel:
            raise CheckpointError(
                f"{p}: a torch.export archive without {_MODEL_JSON} (one program named 'model')"
            )
        for folder in (_WEIGHTS_DIR, _CONSTANTS_DIR):
            if f"{folder}model.pt" in rel:
                refused.append(f"{folder}model.pt (a legacy pickled file)")
            for name in sorted(r for r in rel if r.startswith(folder) and r.endswith("_config.json")):
                refused += _pickled_entries(json.loads(zf.read(root + name)), name, folder == _CONSTANTS_DIR)
    if refused:
        raise CheckpointError(
            f"refusing to load {p}: it holds entries that would run code when loaded ({', '.join(refused[:3])}); "
            "salign loads only archives of plain tensors and a torch-operator graph"
        )


def _pickled_entries(config: Any, name: str, constants: bool) -> list[str]:
    entries = config.get("config", {}) if isinstance(config, dict) else {}
    bad = []
    for fqn, meta in entries.items():
        pickled = not isinstance(meta, dict) or bool(meta.get("use_pickle"))
        other = constants and not str(meta.get("path_name", "")).startswith(_TENSOR_CONSTANT_PREFIX)
        if pickled or other:
            bad.append(f"{name}: {fqn} (pickled)")
    return bad


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Make every ``torch.load`` in the block weights-only (torch reads the variable per call)."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
