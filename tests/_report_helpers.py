"""Synthetic run directories for the report tests: per-sample tables with the Analysis columns
and per-attack distances, generated from a known model of the α–ρ relation.

The generator builds every sample from a margin m = ρ̃·‖g‖ split into a homogeneous part
h = f·m and an effective bias β = m − h, so α_bin = |h|/‖g‖ and the T4 bound holds exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def synthetic_frame(k: int, n: int, rng: np.random.Generator, attacks: Sequence[str]) -> pd.DataFrame:
    """Per-sample table of the k-th model of a sweep (larger k: more robust and aligned)."""
    rho = np.exp(rng.normal(np.log(0.8 + 0.6 * k), 0.35, n))
    rho_lin = rho * np.exp(rng.normal(0.0, 0.15, n))
    g = np.exp(rng.normal(np.log(3.0 / (1 + k)), 0.3, n))
    margin = rho_lin * g
    frac = rng.normal(0.8 + 0.05 * k, 0.15, n)
    h = frac * margin
    beta = margin - h
    alpha_bin = np.abs(h) / g
    alpha = alpha_bin * np.exp(rng.normal(0.0, 0.25, n))
    label = rng.integers(0, 10, n)
    correct = rng.random(n) < 0.99 - 0.02 * k
    pred = np.where(correct, label, (label + 1) % 10)
    nearest = (pred + rng.integers(1, 10, n)) % 10
    runner = np.where(rng.random(n) < 0.7, nearest, (pred + rng.integers(1, 10, n)) % 10)
    adv = np.where(rng.random(n) < 0.8, nearest, runner)
    frame = pd.DataFrame(
        {
            "sample_id": np.arange(n),
            "pred": pred,
            "label": label,
            "correct": correct,
            "logit_margin": margin * 1.1,
            "margin": margin,
            "binarized_grad_norm": g,
            "bias_distance": np.abs(beta) / g,
            "rival_nearest": nearest,
            "rival_runner_up": runner,
            "alignment": alpha,
            "alignment_binarized": alpha_bin,
            "alignment_normalized": alpha / 9.0,
            "linearized_robustness": rho_lin,
            "effective_bias": beta,
            "grad_norm": g * 0.8,
            "homogeneous_fraction": frac,
        }
    )
    dists = {}
    for i, attack in enumerate(attacks):
        scale = 0.3 if attack == "deepfool" else 0.02 * (i + 1)
        dists[attack] = rho * (1 + np.abs(rng.normal(0, scale, n)))
    ens = np.min(np.stack(list(dists.values())), axis=0)
    frame["rho"] = ens
    frame["rho_success"] = True
    frame["adv_class"] = adv
    frame["best_attack"] = [attacks[j] for j in np.argmin(np.stack(list(dists.values())), axis=0)]
    for attack, d in dists.items():
        frame[f"rho_{attack}"] = d
        frame[f"success_{attack}"] = True
    return frame


def write_synthetic_run(
    run_dir: Path,
    *,
    lambdas: Sequence[float] = (0.0, 0.1, 1.0, 10.0),
    n: int = 300,
    seed: int = 0,
    attacks: Sequence[str] = ("deepfool", "ddn", "fmn"),
    image_shape: tuple[int, int, int] = (1, 28, 28),
    gallery: int = 6,
    views: int = 0,
) -> Path:
    """Write config.yaml, timings.json and eval/<tag>.{csv,json,gallery.npz} of a fake sweep, and
    ``eval/<tag>.views.npz`` of the first ``views`` samples (:func:`synthetic_views`)."""
    rng = np.random.default_rng(seed)
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    config = {
        "name": "synthetic",
        "seed": seed,
        "dataset": {"name": "synthetic"},
        "sweep": {"lambdas": list(lambdas)},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (run_dir / "timings.json").write_text(json.dumps({"train": 1.0, "evaluate": 2.0}), encoding="utf-8")
    c, hgt, wid = image_shape
    yy, xx = np.mgrid[0:hgt, 0:wid] / max(hgt, wid)
    images = np.stack(
        [
            np.clip(np.exp(-(((yy - 0.5) ** 2 + (xx - 0.3 - 0.08 * i) ** 2) / 0.02)), 0, 1)[None].repeat(c, 0)
            for i in range(gallery)
        ]
    ).astype(np.float32)
    for k, lam in enumerate(lambdas):
        tag = f"{lam:g}"
        frame = synthetic_frame(k, n, rng, attacks)
        frame.to_csv(run_dir / "eval" / f"{tag}.csv", index=False)
        meta = {"tag": tag, "lambda": lam, "accuracy": 0.99 - 0.02 * k, "accuracy_n": 10000, "seconds": 1.5}
        (run_dir / "eval" / f"{tag}.json").write_text(json.dumps(meta), encoding="utf-8")
        noise = rng.normal(0, 1.0 / (1 + 2 * k), images.shape)
        saliency = (images - 0.3 + noise).astype(np.float32)
        np.savez(
            run_dir / "eval" / f"{tag}.gallery.npz",
            sample_id=np.arange(gallery),
            image=images,
            saliency=saliency,
        )
        if views:
            np.savez_compressed(
                run_dir / "eval" / f"{tag}.views.npz", **synthetic_views(views, image_shape, rng)
            )
    return run_dir


def synthetic_views(
    k: int, image_shape: tuple[int, int, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Saved sample views (salign.experiments.evaluate.sample_views) of the first ``k`` samples,
    the worst case for the page size: digit-like strokes as images (the same for every model,
    as the evaluation subset is), white noise as saliency maps and perturbations (noise does
    not compress)."""
    c, hgt, wid = image_shape
    yy, xx = np.mgrid[0:hgt, 0:wid] / max(hgt, wid)
    angle = (np.arange(k) * 0.618 * np.pi % np.pi)[:, None, None]  # the same images for every model
    dist = np.abs((yy - 0.5) * np.cos(angle) - (xx - 0.5) * np.sin(angle))
    image = (255 * np.clip(1.5 - 20 * dist, 0, 1))[:, None].repeat(c, 1).astype(np.uint8)
    noise = rng.uniform(-1, 1, (2, k, c, hgt, wid)).astype(np.float16)
    return {
        "sample_id": np.arange(k),
        "image": image,
        "saliency": noise[0],
        "saliency_scale": np.ones(k, np.float32),
        "perturbation": noise[1],
        "perturbation_scale": np.full(k, 0.1, np.float32),
    }


#: The arms of :func:`write_arms_run`: tag → (arm record, λ, median ρ, median α, median ρ_q of the
#: gradient map). The gradient-penalty line has α = ρ exactly, so an arm at ρ = 1.5 with α = 2 is
#: +0.5 above it; ``pgd-2`` lies beyond the sweep's ρ range [1, 3].
ARMS: dict[str, tuple[dict[str, object], float | None, float, float, float]] = {
    "0": ({"kind": "sweep", "lambda": 0.0}, 0.0, 1.0, 1.0, 0.2),
    "1": ({"kind": "sweep", "lambda": 1.0}, 1.0, 2.0, 2.0, 0.4),
    "10": ({"kind": "sweep", "lambda": 10.0}, 10.0, 3.0, 3.0, 0.6),
    "pgd-0.5": (
        {"kind": "adversarial", "method": "pgd_l2", "epsilon": 0.5, "steps": 10},
        None,
        1.5,
        2.0,
        0.7,
    ),
    "pgd-2": ({"kind": "adversarial", "method": "pgd_l2", "epsilon": 2.0, "steps": 10}, None, 4.0, 3.5, 0.8),
    "mine": ({"kind": "listed", "spec": "mine.py:build"}, None, 2.5, 1.0, 0.3),
}


def antithetic_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """n (odd) standard-normal-like values whose median is exactly 0 (0 and ± pairs, shuffled)."""
    half = np.abs(rng.normal(0.0, 1.0, (n - 1) // 2))
    return rng.permutation(np.concatenate([[0.0], half, -half]))


def write_arms_run(
    run_dir: Path, *, n: int = 101, seed: int = 0, boundary: bool = True, attributions: bool = True
) -> Path:
    """A fake study with attribution and boundary columns and the arms of :data:`ARMS`: three
    sweep models, two PGD-L2 arms and a listed model, with exact medians of ρ and α (and of the
    gradient map's rank correlation) per model. Methods: ``gradient`` (quality rising with λ),
    ``integrated_gradients`` (α rising, quality flat); a few NaN samples in every method.
    ``attributions=False``: the arms only (no attribution or boundary columns)."""
    rng = np.random.default_rng(seed)
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    config = {
        "name": "arms",
        "seed": seed,
        "dataset": {"name": "synthetic"},
        "sweep": {"lambdas": [0.0, 1.0, 10.0]},
        "models": [{"tag": tag} for tag, spec in ARMS.items() if spec[1] is None],
        "evaluation": {"attributions": ["gradient", "integrated_gradients"], "boundary": boundary},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    attacks = ("deepfool", "ddn")
    for k, (tag, (arm, lam, rho0, alpha0, quality0)) in enumerate(ARMS.items()):
        frame = synthetic_frame(min(k, 3), n, rng, attacks)
        z = antithetic_noise(n, rng)
        frame["rho"] = rho0 * np.exp(0.2 * z)
        frame["alignment"] = alpha0 * np.exp(0.2 * z)
        for attack in attacks:
            frame[f"rho_{attack}"] = frame["rho"]
        lam_rank = {"0": 0, "1": 1, "10": 2}.get(tag, 1)
        quantities = {
            "gradient": (frame["alignment"].to_numpy(), quality0),
            "integrated_gradients": (
                1.2 * frame["alignment"].to_numpy() * np.exp(0.1 * rng.normal(size=n)),
                0.5,
            ),
        }
        for method, (alpha, quality) in quantities.items() if attributions else ():
            q = quality + 0.05 * antithetic_noise(n, rng)
            cols = {
                "alignment": alpha,
                "alignment_binarized": 0.9 * alpha,
                "stroke_mass": 0.3 + 0.5 * q,
                "stroke_lift": 1.0 + 2.0 * q,
                "rank_correlation": q,
            }
            for name, values in cols.items():
                values = np.array(values, dtype=np.float64)
                values[rng.choice(n, 3, replace=False)] = np.nan
                frame[f"attr_{method}_{name}"] = values
        if boundary and attributions:
            failed = np.zeros(n, bool)
            failed[rng.choice(n, 2, replace=False)] = True
            cos = np.clip(0.6 + 0.1 * lam_rank + 0.05 * rng.normal(size=n), -1, 1)
            cols = {
                "boundary_cosine": cos,
                "boundary_alignment": 0.8 * frame["alignment"].to_numpy(),
                "alignment_at_boundary": 0.1 * frame["alignment"].to_numpy(),
                "boundary_ig_alignment": 0.9 * frame["alignment"].to_numpy(),
                "boundary_ig_completeness_gap": 1e-4 * rng.normal(size=n),
            }
            frame["boundary_failed"] = failed
            for name, values in cols.items():
                frame[name] = np.where(failed, np.nan, values)
            for method, quality in (
                ("boundary_gradient", quality0 + 0.2),
                ("boundary_integrated_gradients", 0.5),
            ):
                q = np.where(failed, np.nan, quality + 0.05 * antithetic_noise(n, rng))
                frame[f"attr_{method}_stroke_mass"] = 0.3 + 0.5 * q
                frame[f"attr_{method}_stroke_lift"] = 1.0 + 2.0 * q
                frame[f"attr_{method}_rank_correlation"] = q
        frame.to_csv(run_dir / "eval" / f"{tag}.csv", index=False)
        meta = {"tag": tag, "lambda": lam, "arm": arm, "accuracy": 0.99 - 0.01 * k, "accuracy_n": 10000}
        (run_dir / "eval" / f"{tag}.json").write_text(json.dumps(meta), encoding="utf-8")
    return run_dir
