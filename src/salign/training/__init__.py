"""Training along the robustness axis: input-gradient penalties, adversarial training, trainer.

- :func:`gradient_norm_penalty`: ``mean_i ‖∇_x s(x_i)‖_p^p`` by double backpropagation or the
  finite-difference approximation of Finlay & Oberman (2019) (Etmann et al. 2019, §4).
- :func:`pgd_l2_examples`, :func:`ddn_examples`: adversarial-training baselines.
- :func:`train`: a resumable, deterministic, DDP-ready trainer driven by a :class:`TrainConfig`
  (``load_config("configs/mnist-paper.yaml")``).
"""

from __future__ import annotations

from salign.training.adversarial import ddn_examples, pgd_l2_examples
from salign.training.config import (
    AdversarialConfig,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    RegularizerConfig,
    ScheduleConfig,
    TrainConfig,
    config_from_dict,
    load_config,
    lr_at,
)
from salign.training.penalty import PenaltyTerms, gradient_norm_penalty, penalty_terms
from salign.training.state import load_state, save_state
from salign.training.trainer import MODEL_FILE, STATE_FILE, train

__all__ = [
    "MODEL_FILE",
    "STATE_FILE",
    "AdversarialConfig",
    "DataConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PenaltyTerms",
    "RegularizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "config_from_dict",
    "ddn_examples",
    "gradient_norm_penalty",
    "load_config",
    "load_state",
    "lr_at",
    "penalty_terms",
    "pgd_l2_examples",
    "save_state",
    "train",
]
