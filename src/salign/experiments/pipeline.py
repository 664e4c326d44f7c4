"""The study pipeline: train the arms that train → evaluate every arm → statistics → figures → report.

A study is a list of *arms* (:meth:`ExperimentConfig.arms`): the λ sweep's models, trained here,
and the ``models`` list's, loaded as given (``models/<tag>/source.json`` records the spec and the
SHA-256 of its files). ``run(config)`` writes the run directory of docs/architecture.md and is
resumable at every stage: a finished model (``models/<tag>/checkpoint.safetensors``) is not
retrained (an unfinished one resumes from its last epoch state), a finished evaluation
(``eval/<tag>.csv`` + ``.json``) is not redone (an unfinished one resumes at its first missing
chunk; a listed model whose files changed since is evaluated again), and the report is always
re-rendered from the saved tables. Every file is written atomically, so a run killed at any
moment leaves only complete files (and stray ``.*.tmp`` files, which are ignored and cleaned).

Under ``torchrun`` every rank trains its share of each batch (the trainer's DDP), evaluates its
slice of the evaluation subset, and rank 0 gathers the tables and writes the report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from salign._faults import fault_point
from salign._io import atomic_open, write_json_atomic, write_text_atomic
from salign._norms import NORMS
from salign._progress import progress
from salign.errors import ConfigError, SalignError, TrainingError
from salign.experiments.config import (
    RECORD_KEYS,
    Arm,
    ExperimentConfig,
    config_from_dict,
    load_config,
    norm_text,
)
from salign.experiments.evaluate import (
    clean_accuracy,
    evaluate_chunk,
    evaluation_subset,
    gallery_positions,
    merge_costs,
    sample_views,
    save_gallery,
    save_npz,
)
from salign.experiments.sharding import Shard, barrier, current_shard, gather_to_main, shard_bounds
from salign.report.attributions import ARMS_FILE, ATTRIBUTIONS_FILE
from salign.report.rundata import (
    CONFIG_FILE,
    EVAL_DIR,
    FIGURES_DIR,
    GALLERY_SUFFIX,
    MODELS_DIR,
    REPORT_FILE,
    SANITY_FILE,
    SUMMARY_MD_FILE,
    TIMINGS_FILE,
    VIEWS_SUFFIX,
    summary_file,
)

log = logging.getLogger(__name__)
PARTS_DIR = ".parts"
#: The evaluated images of an ImageFolder study, as a ``path label`` file list.
SUBSET_FILE = "subset.txt"
#: ``models/<tag>/source.json``: where a listed model came from (spec, files and their SHA-256).
SOURCE_FILE = "source.json"


def versions() -> dict[str, str]:
    """Versions of salign, Python, torch, numpy and the report's libraries."""
    import numpy

    import salign

    out = {
        "salign": salign.__version__,
        "python": sys.version.split()[0],
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }
    for mod in ("pandas", "matplotlib"):
        with contextlib.suppress(ImportError):
            out[mod] = str(__import__(mod).__version__)
    return out


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("evaluation.device is 'cuda' but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------
# run directory bookkeeping


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    """The settings of a config record, with the defaults of keys added since it was written
    filled in (a run directory from before ``evaluation.norms`` existed still resumes)."""
    with contextlib.suppress(ConfigError):
        data = config_from_dict(data).to_dict()
    return {k: v for k, v in data.items() if k not in RECORD_KEYS and k != "output_dir"}


def prepare_run_dir(
    cfg: ExperimentConfig, run_dir: Path, *, force: bool, device: torch.device, shard: Shard
) -> None:
    """Create the run directory and write ``config.yaml``; refuse to mix two configs in one.

    With ``force``, the outputs of a previous run (models, evaluations, figures, tables) are
    removed first; only a directory that holds a salign ``config.yaml`` is cleared.
    """
    cfg_path = run_dir / CONFIG_FILE
    if shard.is_main:
        if force and cfg_path.is_file():
            for name in (MODELS_DIR, EVAL_DIR, FIGURES_DIR):
                shutil.rmtree(run_dir / name, ignore_errors=True)
            for name in (SUMMARY_MD_FILE, REPORT_FILE, TIMINGS_FILE, ATTRIBUTIONS_FILE, ARMS_FILE,
                         *map(summary_file, NORMS)):  # fmt: skip
                with contextlib.suppress(FileNotFoundError):
                    (run_dir / name).unlink()
        elif cfg_path.is_file():
            old = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
            if _comparable(old) != _comparable(cfg.to_dict()):
                changed = sorted(
                    k for k in set(_comparable(old)) | set(_comparable(cfg.to_dict()))
                    if _comparable(old).get(k) != _comparable(cfg.to_dict()).get(k)
                )  # fmt: skip
                raise ConfigError(
                    f"{run_dir} holds a run of a different config (differs in: {', '.join(changed)}); "
                    "use --force to start it again, or --out for another directory"
                )
        run_dir.mkdir(parents=True, exist_ok=True)
        for tmp in run_dir.rglob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        record = cfg.to_dict()
        record["versions"] = versions()
        record["resolved"] = {
            "run_dir": str(run_dir.resolve()),
            "device": str(device),
            "world_size": shard.world_size,
            "seed": cfg.seed,
            "evaluation_seed": cfg.evaluation.seed,
            "command": " ".join(sys.argv),
        }
        write_text_atomic(cfg_path, yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    barrier(shard)


class Timings:
    """``timings.json``: seconds per stage and per model, accumulated across resumed invocations."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / TIMINGS_FILE
        self.enabled = enabled
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            with contextlib.suppress(json.JSONDecodeError):
                self.data = json.loads(self.path.read_text(encoding="utf-8"))

    def add(self, stage: str, seconds: float, key: str | None = None) -> None:
        if self.enabled and self.path.is_file():  # another invocation may have added its own since
            with contextlib.suppress(json.JSONDecodeError, OSError):
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
        if key is None:
            self.data[stage] = float(self.data.get(stage, 0.0)) + seconds
        else:
            section = self.data.setdefault(stage, {})
            section[key] = float(section.get(key, 0.0)) + seconds
        if self.enabled:
            write_json_atomic(self.path, self.data)


# ---------------------------------------------------------------------------------------------
# stages


def train_stage(
    cfg: ExperimentConfig, run_dir: Path, timings: Timings, *, quiet: bool | None
) -> dict[str, Path]:
    """Train (or resume, or skip) every arm that trains; returns tag → checkpoint path."""
    from salign.training import MODEL_FILE, train
    from salign.training.trainer import load_data

    paths: dict[str, Path] = {}
    data = None
    for arm in cfg.arms():
        if arm.train is None:
            continue
        model_dir = run_dir / MODELS_DIR / arm.tag
        final = model_dir / MODEL_FILE
        if final.is_file() and (model_dir / "done.json").is_file():
            paths[arm.tag] = final
            continue
        if data is None and arm.train.data.stream is None:  # streamed data is read by each run
            data = load_data(arm.train)
        t0 = time.perf_counter()
        paths[arm.tag] = train(arm.train, run_dir=model_dir, resume=True, data=data, quiet=quiet)
        seconds = time.perf_counter() - t0
        timings.add("train", seconds, arm.tag)
        if current_shard().is_main:
            write_json_atomic(
                model_dir / "done.json", {"lambda": arm.lam, "seconds_this_invocation": seconds}
            )
    return paths


def load_arm(
    arm: Arm, *, checkpoint: Path | None = None, device: torch.device, seed: int = 0
) -> torch.nn.Module:
    """The model of one arm on ``device``: its trained ``checkpoint``, else what its spec names
    (:func:`salign.models.load_spec`, after seeding torch with ``seed`` so a model built without
    weights is reproducible). A listed model's errors are prefixed with its tag (``models[mine]:``)."""
    import salign

    if checkpoint is not None:
        return salign.models.load(checkpoint, map_location=device)
    if arm.spec is None:
        raise ConfigError(f"model {arm.tag!r} has not been trained yet")
    torch.manual_seed(seed)
    try:
        return salign.models.load_spec(arm.spec, weights=arm.weights, map_location=device, **arm.kwargs)
    except SalignError as exc:
        if not arm.listed:
            raise
        raise type(exc)(f"models[{arm.tag}]: {exc}") from exc


def source_record(arm: Arm) -> dict[str, Any]:
    """What ``models/<tag>/source.json`` holds for a listed arm: its spec, weights, kwargs and the
    SHA-256 of every file they name (the spec's file, the weights), so a changed file is seen."""
    target, _, factory = (arm.spec or "").rpartition(":")
    spec_file = target if target.endswith(".py") and factory else arm.spec
    digests = {}
    for name in (spec_file, arm.weights):
        if name is not None and Path(name).is_file():
            digest = hashlib.sha256()
            with open(name, "rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
            digests[name] = digest.hexdigest()
    return json.loads(json.dumps({**arm.describe(), "sha256": digests}))  # as read back from the file


def _evaluated(run_dir: Path, tag: str) -> bool:
    return (run_dir / EVAL_DIR / f"{tag}.csv").is_file() and (run_dir / EVAL_DIR / f"{tag}.json").is_file()


def check_listed_arms(cfg: ExperimentConfig, run_dir: Path, *, shard: Shard) -> list[Arm]:
    """Before anything is trained: load every listed arm still to evaluate once (on the CPU) so a
    bad spec fails now with its tag, and record its source. A listed arm whose files changed since
    its source was recorded loses its evaluation, finished or partial (it is redone). Returns the
    arms to evaluate."""
    todo = []
    for arm in cfg.arms():
        done = _evaluated(run_dir, arm.tag)
        record = source_record(arm) if arm.listed else None
        source = run_dir / MODELS_DIR / arm.tag / SOURCE_FILE
        if record is not None and source.is_file():
            try:
                changed = json.loads(source.read_text(encoding="utf-8")) != record
            except ValueError:  # damaged: the evaluation cannot be trusted to be of these files
                changed = True
            if changed:
                barrier(shard)  # every rank has compared before rank 0 removes anything
                if shard.is_main:
                    for name in (f"{arm.tag}.json", f"{arm.tag}.csv", f"{arm.tag}{GALLERY_SUFFIX}"):
                        with contextlib.suppress(FileNotFoundError):
                            (run_dir / EVAL_DIR / name).unlink()
                    shutil.rmtree(_parts_dir(run_dir, arm.tag), ignore_errors=True)
                done = False
        if done:
            continue
        todo.append(arm)
        if record is not None:
            load_arm(arm, device=torch.device("cpu"), seed=cfg.seed)
            if shard.is_main:
                write_json_atomic(source, record)
    barrier(shard)
    return todo


def _parts_dir(run_dir: Path, tag: str) -> Path:
    return run_dir / EVAL_DIR / PARTS_DIR / tag


def evaluate_stage_model(
    cfg: ExperimentConfig,
    run_dir: Path,
    tag: str,
    lam: float | None,
    model: torch.nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    timings: Timings,
    *,
    shard: Shard,
    quiet: bool | None,
    arm: dict[str, Any] | None = None,
) -> None:
    """Evaluate one model on this rank's slice in saved chunks; rank 0 gathers and writes
    ``eval/<tag>.csv``, the gallery, the sample views of the first ``report.interactive_samples``
    samples and ``eval/<tag>.json`` (the completion marker, last; ``arm``: what the model is,
    :meth:`Arm.describe`, recorded there).

    A chunk's views (``<chunk>.views.npz``) are written before its table, so a chunk whose table
    exists has its views: a resumed evaluation reads both and recomputes neither."""
    import numpy as np
    import pandas as pd

    ev = cfg.evaluation
    x_eval, y_eval, ids, _ = data
    device = next(model.parameters()).device
    start, stop = shard_bounds(len(ids), shard.rank, shard.world_size)
    parts = _parts_dir(run_dir, tag)
    parts.mkdir(parents=True, exist_ok=True)
    frames = []
    views: list[dict[str, Any]] = []
    n_views = cfg.report.interactive_samples
    chunk_costs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    chunk_starts = list(range(start, stop, ev.chunk_size))
    batches = (ev.batch_size, cfg.attacks.batch_size or ev.chunk_size)  # (analyze, attacks)
    attributions = [(e.label, e.resolve(), e.options) for e in ev.attributions]
    for c0 in progress(chunk_starts, desc=f"evaluate {tag}", total=len(chunk_starts), quiet=quiet):
        c1 = min(c0 + ev.chunk_size, stop)
        part = parts / f"{c0:07d}-{c1:07d}.csv"
        part_views = part.with_suffix(VIEWS_SUFFIX)
        if part.is_file():
            frames.append(pd.read_csv(part))
            if part_views.is_file():
                with np.load(part_views) as npz:
                    views.append({k: npz[k] for k in npz.files})
            continue
        while True:
            try:
                fault_point("evaluate_chunk", rank=shard.rank)  # tests only: SALIGN_FAULT=oom:...
                frame, costs = evaluate_chunk(
                    model,
                    x_eval[c0:c1].to(device),
                    y_eval[c0:c1],
                    ids[c0:c1],
                    rival=ev.rival,
                    candidates=ev.candidates,
                    batch_size=batches[0],
                    attacks={p: cfg.attacks.for_norm(p) for p in ev.norms},
                    budget=cfg.attacks.budget,
                    steps=cfg.attacks.steps,
                    attack_batch_size=batches[1],
                    seed=cfg.seed * 1_000_003 + c0,
                    norms=ev.norms,
                    attributions=attributions,
                    boundary=ev.boundary,
                    quality_threshold=ev.quality_threshold,
                )
                break
            except torch.OutOfMemoryError as exc:
                batches = _halved(batches, exc, tag, c0, c1)
        adversarial = costs.pop("adversarial", None)
        if c0 < n_views and adversarial is not None:
            k = min(c1, n_views) - c0
            chunk_views = sample_views(model, x_eval[c0 : c0 + k].to(device), adversarial[:k])
            if chunk_views is not None:
                chunk_views["sample_id"] = ids[c0 : c0 + k].cpu().numpy()
                save_npz(part_views, compressed=True, **chunk_views)
                views.append(chunk_views)
        chunk_costs.append(costs)
        with atomic_open(part, "w", encoding="utf-8", newline="") as fh:
            frame.to_csv(fh, index=False)
        frames.append(pd.read_csv(part))  # the same dtypes as a resumed chunk
    local = pd.concat(frames, ignore_index=True) if frames else None
    gathered = gather_to_main((local, merge_costs(chunk_costs), views), shard)
    seconds = time.perf_counter() - t0
    if not shard.is_main:
        return
    assert gathered is not None
    table = pd.concat([f for f, _, _ in gathered if f is not None], ignore_index=True)
    table = table.sort_values("sample_id", kind="stable").reset_index(drop=True)
    total_costs = merge_costs([c for _, c, _ in gathered])
    with atomic_open(run_dir / EVAL_DIR / f"{tag}.csv", "w", encoding="utf-8", newline="") as fh:
        table.to_csv(fh, index=False)
    all_views = [v for _, _, rank_views in gathered for v in rank_views]
    if all_views:  # ranks hold consecutive slices in rank order: sample order is kept
        save_npz(
            run_dir / EVAL_DIR / f"{tag}{VIEWS_SUFFIX}",
            compressed=True,
            **{key: np.concatenate([v[key] for v in all_views]) for key in all_views[0]},
        )
    if ev.gallery:
        pos = gallery_positions(y_eval, ev.gallery)
        save_gallery(run_dir / EVAL_DIR / f"{tag}{GALLERY_SUFFIX}", model, x_eval[pos].to(device), ids[pos])
    _, _, _, acc_data = data
    x_acc, y_acc = acc_data
    meta: dict[str, Any] = {
        "tag": tag,
        "lambda": lam,
        **({"arm": arm} if arm is not None else {}),
        "n": len(table),
        "attacks": {str(norm_text(p)): cfg.attacks.for_norm(p) for p in ev.norms},
        "norms": [norm_text(p) for p in ev.norms],
        "budget": cfg.attacks.budget,
        "rival": ev.rival,
        "seconds": seconds,
        **total_costs,
        **clean_accuracy(model, x_acc, y_acc, batch_size=max(ev.batch_size, 256)),
    }
    write_json_atomic(run_dir / EVAL_DIR / f"{tag}.json", meta)
    timings.add("evaluate", seconds, tag)
    shutil.rmtree(parts, ignore_errors=True)
    with contextlib.suppress(OSError):
        parts.parent.rmdir()  # .parts, once no model has unfinished chunks


def _halved(batches: tuple[int, int], exc: BaseException, tag: str, c0: int, c1: int) -> tuple[int, int]:
    """The (analyze, attack) batch sizes halved after an out-of-memory error, logged; the error
    again (a one-line TrainingError) when both are already 1."""
    if batches == (1, 1):
        raise TrainingError(
            f"evaluation of {tag}, samples {c0}-{c1}: out of memory even one image at a time ({exc}); "
            "use a smaller model or input size, or evaluation.device: cpu"
        ) from exc
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    new = (max(1, batches[0] // 2), max(1, batches[1] // 2))
    log.warning(
        "evaluation of %s, samples %d-%d: out of memory (%s); retrying with analyze batch %d and "
        "attack batch %d (halved)", tag, c0, c1, str(exc).splitlines()[0] if str(exc) else "", *new,
    )  # fmt: skip
    return new


def _evaluation_data(cfg: ExperimentConfig) -> tuple[Any, str | None]:
    """((x_eval, y_eval, sample_ids, (x_acc, y_acc)) on CPU, the subset as a file list or None).

    For an ImageFolder the evaluated images are also returned as a ``path label`` file list
    (paths relative to the split folder), which ``dataset.options.file_list`` accepts: the
    same images for another study or machine."""
    import salign

    d, acc_n = cfg.dataset, cfg.evaluation.accuracy_n
    if d.name == "imagefolder":  # decode only what is evaluated (an ImageNet split never fits)
        from salign.data.imagefolder import _split_root, list_images, read_imagefolder

        if d.data_dir is None:
            raise ConfigError("dataset 'imagefolder' needs dataset.data_dir")
        opts = dict(d.options)
        paths, labels, _ = list_images(d.data_dir, d.split, file_list=opts.get("file_list"))
        ids = evaluation_subset(len(labels), cfg.evaluation.n, cfg.evaluation.seed)
        x_ev, y_ev, _ = read_imagefolder(d.data_dir, d.split, indices=ids, **opts)
        acc = (x_ev, y_ev)
        if acc_n is not None:
            acc_ids = torch.arange(min(acc_n, len(labels)))
            acc = read_imagefolder(d.data_dir, d.split, indices=acc_ids, **opts)[:2]
        base = _split_root(Path(d.data_dir).expanduser(), d.split)
        lines = [f"{_relative(paths[i], base)} {labels[i]}" for i in ids.tolist()]
        head = f"# evaluation subset: n={cfg.evaluation.n}, seed={cfg.evaluation.seed}, of {len(labels)} images\n"
        return (x_ev, y_ev, ids, acc), head + "\n".join(lines) + "\n"
    x, y = salign.data.load(d.name, d.split, data_dir=d.data_dir, **d.options)
    ids = evaluation_subset(len(y), cfg.evaluation.n, cfg.evaluation.seed)
    acc = (x, y) if acc_n is None or acc_n >= len(y) else (x[:acc_n], y[:acc_n])
    return (x[ids], y[ids], ids, acc), None


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path.resolve())


def sanity_stage(
    cfg: ExperimentConfig, run_dir: Path, x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> None:
    """Write ``eval/sanity.csv`` (figure P8) once."""
    from salign.experiments.sanity import linear_sanity

    path = run_dir / EVAL_DIR / SANITY_FILE
    if path.is_file():
        return
    frame = linear_sanity(x, y, num_classes=num_classes, seed=cfg.seed)
    if frame is None:
        return
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False)


# ---------------------------------------------------------------------------------------------
# entry point


def run(
    config: ExperimentConfig | dict[str, Any] | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    quiet: bool | None = None,
) -> Any:
    """Run a study end to end and return its :class:`salign.report.Report` (``None`` off rank 0).

    Args:
        config: an :class:`ExperimentConfig`, a dict, or a YAML path.
        out: run directory (default: ``config.output_dir / config.name``).
        force: redo everything (clears the previous outputs of this run directory).
        quiet: no progress bars (default: ``SALIGN_QUIET``, or no TTY).

    Raises:
        ConfigError: invalid config, or ``out`` holds a run of a different config.
        MissingDependencyError: the ``report`` extra (pandas, matplotlib) is not installed.
    """
    from salign.report import render
    from salign.report._deps import require_pandas, require_pyplot
    from salign.training import distributed as dist_util

    cfg = config if isinstance(config, ExperimentConfig) else (
        config_from_dict(config) if isinstance(config, dict) else load_config(config)
    )  # fmt: skip
    # The tables and figures need the report extra: say so before training anything (a core-only
    # install otherwise trained the first model and then failed on `import pandas`).
    require_pandas()
    require_pyplot()
    cfg.evaluation.check_attributions()  # a bad attribution entry fails before any training
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    run_dir = cfg.run_dir(out)
    device = resolve_device(cfg.evaluation.device)
    info = dist_util.setup(device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    with dist_util.left_at_exit(info):
        shard = current_shard()
        started = time.perf_counter()
        prepare_run_dir(cfg, run_dir, force=force, device=device, shard=shard)
        timings = Timings(run_dir, enabled=shard.is_main)
        todo = check_listed_arms(cfg, run_dir, shard=shard)
        checkpoints = train_stage(cfg, run_dir, timings, quiet=quiet) if cfg.trains else {}
        data, subset_list = _evaluation_data(cfg)
        x_eval, y_eval = data[0], data[1]
        if subset_list is not None and shard.is_main:
            (run_dir / EVAL_DIR).mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / EVAL_DIR / SUBSET_FILE, subset_list)
        for arm in todo:  # every arm on the same seeded images
            model = load_arm(arm, checkpoint=checkpoints.get(arm.tag), device=device, seed=cfg.seed)
            evaluate_stage_model(
                cfg,
                run_dir,
                arm.tag,
                arm.lam,
                model,
                data,
                timings,
                shard=shard,
                quiet=quiet,
                arm=arm.describe(),
            )
            barrier(shard)
        report = None
        if shard.is_main:
            if cfg.report.linear_sanity:
                num_classes = int(y_eval.max()) + 1 if len(y_eval) else 0
                t0 = time.perf_counter()
                if num_classes >= 2:
                    sanity_stage(cfg, run_dir, x_eval, y_eval, num_classes)
                timings.add("sanity", time.perf_counter() - t0)
            timings.add("pipeline", time.perf_counter() - started)
            t0 = time.perf_counter()
            report = render(
                run_dir,
                n_bootstrap=cfg.report.n_bootstrap,
                seed=cfg.seed,
                level=cfg.report.level,
                figures=cfg.report.figures,
            )
            timings.add("report", time.perf_counter() - t0)
        barrier(shard)
        return report
