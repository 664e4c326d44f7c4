"""Studies end to end: a YAML config → λ sweep → evaluation → statistics → figures → report.

- :class:`ExperimentConfig`, :func:`load_config`, :func:`config_from_dict`: the validated schema
  (unknown keys are errors that name the key); :meth:`ExperimentConfig.arms` lists the study's
  models (:class:`Arm`: the λ sweep's and the ``models`` list's, :class:`ArmConfig`).
- :func:`run`: the resumable pipeline writing the run directory (docs/architecture.md).
- :func:`evaluation_subset`, :func:`evaluate_chunk`: the fixed seeded subset and one chunk's table.
- :func:`shard_bounds`: each torchrun rank's slice of the evaluation subset.
"""

from __future__ import annotations

from salign.experiments.config import (
    Arm,
    ArmConfig,
    AttackConfig,
    DatasetConfig,
    EvaluationConfig,
    ExperimentConfig,
    ModelSpec,
    ReportConfig,
    SweepConfig,
    config_from_dict,
    load_config,
    packaged_config,
)
from salign.experiments.evaluate import clean_accuracy, evaluate_chunk, evaluation_subset, gallery_positions
from salign.experiments.pipeline import run
from salign.experiments.sharding import Shard, current_shard, gather_to_main, shard_bounds, shard_items

__all__ = [
    "Arm",
    "ArmConfig",
    "AttackConfig",
    "DatasetConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "ModelSpec",
    "ReportConfig",
    "Shard",
    "SweepConfig",
    "clean_accuracy",
    "config_from_dict",
    "current_shard",
    "evaluate_chunk",
    "evaluation_subset",
    "gallery_positions",
    "gather_to_main",
    "load_config",
    "packaged_config",
    "run",
    "shard_bounds",
    "shard_items",
]
