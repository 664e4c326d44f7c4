"""SmallNet: the MNIST network of Etmann et al. (2019), as defined in the authors' code."""

from __future__ import annotations

from torch import Tensor, nn


class SmallNet(nn.Module):
    """conv3×3-32 → pool → conv3×3-64 → pool → conv3×3-128 → pool → dense 128 → dropout → dense.

    All convolutions use 'same' padding and ReLU; pools are 2×2 max-pools (28 → 14 → 7 → 3).
    With the defaults (1×28×28 inputs, 10 classes) it has 241,546 parameters, as in
    ``robustness-interpretability`` (Etmann et al., ICML 2019). All layers have biases, so the
    effective bias β(x) is non-zero.

    Args:
        in_channels: input channels (1 for MNIST).
        num_classes: number of logits.
        input_size: height = width of the inputs (28 for MNIST).
        dropout: dropout probability before the last layer (0.5 in the paper).
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = input_size // 2 // 2 // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * side * side, 128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
