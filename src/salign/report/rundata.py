"""The files of a run directory that the report reads, and a loader for them.

Layout (written by :mod:`salign.experiments`, read here; see docs/architecture.md)::

    <run>/config.yaml              resolved config with versions and seed
    <run>/timings.json             seconds per stage and per model
    <run>/eval/<tag>.csv           per-sample table of one model (see salign.report.columns)
    <run>/eval/<tag>.json          that model's metadata: λ, accuracy, timings, attacks, n
    <run>/eval/<tag>.gallery.npz   sample_id, image, saliency of the gallery images (P1)
    <run>/eval/<tag>.views.npz     sample_id, image, saliency, perturbation (+ their scales) of the
                                   first report.interactive_samples samples (interactive report;
                                   salign.experiments.evaluate.sample_views)
    <run>/eval/sanity.csv          the linear sanity experiment (P8), optional
    <run>/figures/*.png, <run>/summary.csv, <run>/report.html   written by the report

``<tag>`` names a model (an *arm* of the study): its λ formatted by :func:`lambda_tag` for the
λ sweep, the tag of an entry of the config's ``models`` list (its ``.json`` has ``"lambda":
null``), or ``pretrained``. Nothing here assumes a model has a λ: :attr:`ModelResult.lam` is NaN
and :attr:`ModelResult.label` the tag for the others.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salign.errors import DataError, MissingFileError
from salign.report._deps import require_pandas

CONFIG_FILE = "config.yaml"
TIMINGS_FILE = "timings.json"
EVAL_DIR = "eval"
MODELS_DIR = "models"
FIGURES_DIR = "figures"
SUMMARY_FILE = "summary.csv"
SUMMARY_MD_FILE = "summary.md"
REPORT_FILE = "report.html"
SANITY_FILE = "sanity.csv"
GALLERY_SUFFIX = ".gallery.npz"
VIEWS_SUFFIX = ".views.npz"
PRETRAINED_TAG = "pretrained"


def summary_file(p: float = 2.0) -> str:
    """File name of table T1 in the norm ``p``: ``summary.csv`` (L2), ``summary_linf.csv``, ..."""
    from salign.report.columns import norm_suffix

    return SUMMARY_FILE.replace(".csv", f"{norm_suffix(p)}.csv")


def lambda_tag(lam: float | None) -> str:
    """Directory/file name of the model trained with penalty weight ``lam`` (``None``: pretrained)."""
    if lam is None or (isinstance(lam, float) and math.isnan(lam)):
        return PRETRAINED_TAG
    return f"{float(lam):g}"


@dataclass
class ModelResult:
    """Everything the report knows about one evaluated model."""

    tag: str
    lam: float  # NaN for a pretrained model evaluated without a sweep
    frame: Any  # pandas.DataFrame of per-sample columns
    meta: dict[str, Any]
    gallery: dict[str, np.ndarray] | None = None
    #: the saved sample views (``<tag>.views.npz``), or None
    views: dict[str, np.ndarray] | None = None

    @property
    def label(self) -> str:
        """Short human label: ``λ=10`` or the tag."""
        return self.tag if math.isnan(self.lam) else f"λ={self.lam:g}"


@dataclass
class RunData:
    """A run directory loaded for reporting: config, timings and the models (the λ sweep in λ
    order, then the listed models in config order)."""

    run_dir: Path
    config: dict[str, Any]
    models: list[ModelResult]
    timings: dict[str, Any] = field(default_factory=dict)
    sanity: Any = None  # pandas.DataFrame or None
    #: the norm whose columns the frames hold under the L2 names (see :meth:`for_norm`)
    norm: float = 2.0

    @property
    def name(self) -> str:
        """The run's name (from its config, else the directory name)."""
        return str(self.config.get("name") or self.run_dir.name)

    @property
    def norms(self) -> list[float]:
        """The norms every model was evaluated in (``evaluation.norms``), L2 first."""
        from salign.report.columns import norms_in

        found = [norms_in(m.frame.columns) for m in self.models]
        return [p for p in found[0] if all(p in f for f in found)] if found else []

    def for_norm(self, p: float) -> RunData:
        """This run with each model's table replaced by the columns of the norm ``p`` under the L2
        names (:func:`salign.report.columns.norm_view`): every table and figure, written for ρ
        and α, then shows ρ_p and α_p."""
        from salign.report.columns import norm_view

        models = [
            ModelResult(m.tag, m.lam, norm_view(m.frame, p), m.meta, m.gallery, m.views) for m in self.models
        ]
        return RunData(self.run_dir, self.config, models, self.timings, self.sanity, norm=float(p))

    def pooled(self) -> Any:
        """All models' per-sample tables stacked (with their ``model`` and ``lambda`` columns)."""
        pd = require_pandas()
        return pd.concat([m.frame for m in self.models], ignore_index=True)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping (empty dict for an empty file)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise DataError(
            f"{path} is not valid YAML ({exc.__class__.__name__}); restore or delete it"
        ) from None
    return data or {}


def read_json(path: Path) -> Any:
    """Read a JSON file written by the pipeline; a damaged one is a DataError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc}); restore it, or delete it to recompute it"
        ) from None


def _read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an optional ``.npz`` file (None when absent); a damaged one is a DataError."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"{path} is not a readable .npz file ({exc}); restore it or delete it (the report then leaves out its images)"
        ) from None


def evaluated_tags(run_dir: str | os.PathLike[str]) -> list[str]:
    """Tags of the models with a finished evaluation (both ``<tag>.csv`` and ``<tag>.json``)."""
    eval_dir = Path(run_dir) / EVAL_DIR
    if not eval_dir.is_dir():
        return []
    tags = []
    for csv in sorted(eval_dir.glob("*.csv")):
        if csv.name == SANITY_FILE:
            continue
        if csv.with_suffix(".json").is_file():
            tags.append(csv.stem)
    return tags


def _report_order(config: dict[str, Any]) -> Any:
    """Sort key of the models: the λ sweep by λ, then the ``models`` list in config order, then the rest by tag."""
    entries = config.get("models")
    listed = entries if isinstance(entries, list) else []
    position = {entry.get("tag"): i for i, entry in enumerate(listed) if isinstance(entry, dict)}

    def key(m: ModelResult) -> tuple[int, float, int, str]:
        if not math.isnan(m.lam):
            return (0, m.lam, 0, m.tag)
        return (1, 0.0, position.get(m.tag, len(position)), m.tag)

    return key


def load_run(run_dir: str | os.PathLike[str]) -> RunData:
    """Load a run directory's config, timings and per-model evaluations for the report.

    Raises:
        MissingFileError: ``run_dir`` does not exist.
        DataError: it has no finished evaluation (nothing to report).
    """
    from salign.report.columns import LAMBDA, MODEL, add_derived

    pd = require_pandas()
    root = Path(run_dir)
    if not root.is_dir():
        raise MissingFileError(f"run directory not found: {root}")
    config = read_yaml(root / CONFIG_FILE) if (root / CONFIG_FILE).is_file() else {}
    timings: dict[str, Any] = {}
    if (root / TIMINGS_FILE).is_file():
        timings = read_json(root / TIMINGS_FILE)
    models = []
    for tag in evaluated_tags(root):
        meta = read_json(root / EVAL_DIR / f"{tag}.json")
        try:
            frame = pd.read_csv(root / EVAL_DIR / f"{tag}.csv")
        except Exception as exc:  # pandas raises several parser errors
            raise DataError(f"{root / EVAL_DIR / f'{tag}.csv'} is not a readable table: {exc}") from exc
        lam_raw = meta.get("lambda")
        lam = float("nan") if lam_raw is None else float(lam_raw)
        frame[MODEL] = tag
        frame[LAMBDA] = lam
        gallery = _read_npz(root / EVAL_DIR / f"{tag}{GALLERY_SUFFIX}")
        views = _read_npz(root / EVAL_DIR / f"{tag}{VIEWS_SUFFIX}")
        models.append(ModelResult(tag, lam, add_derived(frame), meta, gallery, views))
    if not models:
        raise DataError(f"{root} has no finished evaluation (no {EVAL_DIR}/<model>.csv with its .json)")
    models.sort(key=_report_order(config))
    sanity = None
    if (root / EVAL_DIR / SANITY_FILE).is_file():
        sanity = pd.read_csv(root / EVAL_DIR / SANITY_FILE)
    return RunData(root, config, models, timings, sanity)
