"""The same model as a user's Python file + ``torch.save``'d state dict, a ``torch.export``
archive and a salign checkpoint (shared by test_model_spec.py and test_zoo.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import salign

#: A user's model file, written without salign: the layout of salign's relu_cnn(channels=[4]),
#: so a salign checkpoint of the same weights exists.
USER_FILE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(width * 14 * 14, 10),
        )

    def forward(self, x):
        return self.net(x)


def make_model(width: int = 4) -> nn.Module:
    return Net(width)


NOT_A_MODEL = 3


def make_list():
    return [1, 2]
"""


def make_forms(tmp_path: Path) -> dict[str, Any]:
    """The same weights in the three forms under ``tmp_path`` (``user``: the model file, ``state``:
    its ``torch.save``d state dict, ``pt2``, ``ckpt``), plus a data file of 8 labelled images."""
    user = tmp_path / "mynet.py"
    user.write_text(textwrap.dedent(USER_FILE))
    net = salign.models.load_spec(f"{user}:make_model")
    torch.manual_seed(1)
    for p in net.parameters():
        nn.init.normal_(p, std=0.1)
    state = tmp_path / "weights.pt"
    torch.save(net.state_dict(), state)
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 10
    data = tmp_path / "data.npz"
    np.savez(data, x=x.numpy(), y=y.numpy())
    exported = tmp_path / "model.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net.eval(), (x[:2],), dynamic_shapes=({0: batch},)), exported)
    ckpt = tmp_path / "model.safetensors"
    reference = salign.models.build("relu_cnn", channels=[4])
    reference.load_state_dict(net.state_dict())
    salign.models.save(reference, ckpt)
    return {"user": user, "state": state, "pt2": exported, "ckpt": ckpt, "data": data, "x": x, "net": net}
