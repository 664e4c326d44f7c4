"""ρ(x) by a verified ensemble of minimal-norm L2 attacks (Etmann et al. 2019, D5)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from salign._progress import progress_bar
from salign._validation import eval_mode
from salign.attacks._core import (
    CountingModel,
    Tracker,
    batch_view,
    chunks,
    clean_forward,
    flags_of,
    frozen_parameters,
    prepare,
    refine,
    verify,
    warn_flags,
)
from salign.attacks.alma import _alma
from salign.attacks.carlini_wagner import _carlini_wagner
from salign.attacks.ddn import _ddn
from salign.attacks.deepfool import _deepfool
from salign.attacks.fmn import _fmn
from salign.attacks.result import FLAG_NAMES, AttackResult, concat_results
from salign.errors import InputError

#: name -> (iteration function, warm-started by the ensemble from the best point so far).
#: DDN runs cold although it accepts ``start``: from DeepFool's point it settles in DeepFool's
#: basin (SmallNet/MNIST, 60 test images, 1000 steps: median 1.4183 warm vs 1.4002 cold). FMN
#: and ALMA refine the best point so far, which is polished after every cold attack; on held-out
#: MNIST test images 1000–1099 of the gradient-regularised SmallNet a warm ALMA put 0.99 of the
#: samples within 1% of the best-known distance, a cold one 0.90 (standard budget).
ATTACKS: dict[str, tuple[Any, bool]] = {
    "deepfool": (_deepfool, False),
    "ddn": (_ddn, False),
    "fmn": (_fmn, True),
    "alma": (_alma, True),
    "carlini_wagner": (_carlini_wagner, False),
}

#: budget -> (steps per attack, extra runs after the requested attacks). An extra run is
#: ``(label, attack, options)``: it runs from x (cold) when ``attack`` is among the requested
#: attacks. ``standard`` adds a cold FMN copy: on the gradient-regularised MNIST SmallNet the
#: attacks land in different local minima per sample, and in the previous benchmark run this
#: copy took the ensemble's median from 1.0159 to 1.0087 of that run's best-known median, for
#: 1.23× the forwards (docs/benchmarks/attacks.md, "Budgets").
#: ``thorough`` adds a cold DDN on the logit margin, a loss that settles in other minima than
#: DDN's cross-entropy on smooth models.
BUDGETS: dict[str, tuple[int, tuple[tuple[str, str, dict[str, Any]], ...]]] = {
    "fast": (100, ()),
    "standard": (1000, (("fmn_cold", "fmn", {}),)),
    "thorough": (1000, (("fmn_cold", "fmn", {}), ("ddn_margin", "ddn", {"loss": "margin"}))),
}

#: Attacks that always run all their steps in the ensemble. ALMA's multipliers adapt over long
#: stretches without a new best point: with early exit (patience 100 of 1000 steps) it ended
#: 2.7% worse on MNIST SmallNet (60 images: 1.4653 vs 1.4275).
NO_EARLY_EXIT = frozenset({"deepfool", "carlini_wagner", "alma"})

#: Relative margin above DeepFool's distance at which an attack is flagged "worse_than_deepfool".
WORSE_THAN_DEEPFOOL = 1e-3

#: DeepFool converges in a handful of iterations; its cap does not follow the budget.
DEEPFOOL_STEPS = 50


def _options(name: str, steps: int) -> dict[str, Any]:
    if name == "deepfool":
        return {"steps": min(DEEPFOOL_STEPS, max(steps, 1))}
    if name == "carlini_wagner":
        rounds = 5 if steps >= 500 else 3
        return {"steps": max(steps // rounds, 1), "binary_search_steps": rounds, "initial_const": 0.1}
    return {"steps": steps}


def _attack_chunk(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None,
    attacks: list[tuple[str, str, bool, dict[str, Any]]],
    steps: int,
    patience: int | None,
    line_search_steps: int,
    polish_steps: int,
    levels: int | None,
    bar: Any,
) -> AttackResult:
    clock = time.perf_counter()
    cm = CountingModel(model)
    labels, clean_class = clean_forward(cm, x, labels)
    attacked = clean_class == labels
    n = x.shape[0]
    best_dist = torch.where(attacked, torch.full((n,), float("inf"), dtype=x.dtype, device=x.device), 0.0)
    best_adv = x.clone()
    best_class = clean_class.clone()
    best_name: list[str | None] = [None if bool(a) else "clean" for a in attacked]
    per_attack: dict[str, AttackResult] = {}
    zero_gradient = torch.zeros(n, dtype=torch.bool, device=x.device)
    nonfinite = torch.zeros_like(zero_gradient)
    nondeterministic = torch.zeros_like(zero_gradient)
    plan_labels = [label for label, _, _, _ in attacks]
    for label, name, warm, extra in attacks:
        impl, _ = ATTACKS[name]
        f0, b0, t0 = cm.forwards, cm.backwards, time.perf_counter()
        tracker = Tracker(x, labels, patience=None if name in NO_EARLY_EXIT else patience)
        tracker.best_dist[~attacked] = 0
        tracker.active &= attacked
        options = {**_options(name, steps), **extra}
        if warm and bool(torch.isfinite(best_dist).any()):
            options["start"] = best_adv
            # the start point is verified: the attack's result can only improve on it
            tracker.best_dist = best_dist.clone()
            tracker.best_adv = best_adv.clone()
        impl(cm, x, labels, tracker, **options)
        last = label == plan_labels[-1]
        if last and polish_steps:
            # polish once, at the end, from the best point over every attack so far
            better_before = best_dist < tracker.best_dist
            tracker.best_dist = torch.where(better_before, best_dist, tracker.best_dist)
            tracker.best_adv = torch.where(batch_view(better_before, x), best_adv, tracker.best_adv)
        # polish the last attack's point (the best over all) and every cold-started attack's
        # own point: a cold DDN ends within its step size of the boundary's nearest point, and
        # the attacks after it start from the polished point
        refine(cm, tracker, line_search_steps, levels, polish_steps if last or not warm else 0)
        verified = verify(cm, x, tracker.best_adv, labels, clean_class, levels)
        verified["distance"][~attacked] = 0
        verified["success"][~attacked] = True
        zero_gradient |= tracker.zero_gradient
        nonfinite |= tracker.nonfinite
        nondeterministic |= verified["nondeterministic"]
        per_attack[label] = AttackResult(
            adv=verified["adv"],
            distance=verified["distance"],
            success=verified["success"],
            adv_class=verified["adv_class"],
            labels=labels,
            forwards=cm.forwards - f0,
            backwards=cm.backwards - b0,
            seconds=time.perf_counter() - t0,
            flags=flags_of(tracker, verified, attacked),
        )
        better = verified["distance"] < best_dist
        best_dist = torch.where(better, verified["distance"], best_dist)
        best_adv = torch.where(better.view(-1, *([1] * (x.ndim - 1))), verified["adv"], best_adv)
        best_class = torch.where(better, verified["adv_class"], best_class)
        for i in better.nonzero().squeeze(1).tolist():
            best_name[i] = label
        bar.update(1)
    success = torch.isfinite(best_dist)
    flags = dict.fromkeys(FLAG_NAMES, 0)
    flags["zero_gradient"] = int(zero_gradient.sum())
    flags["nonfinite_logits"] = int(nonfinite.sum())
    flags["not_found"] = int((~success).sum())
    flags["nondeterministic"] = int(nondeterministic.sum())
    if "deepfool" in per_attack:
        reference = per_attack["deepfool"].distance
        worse = torch.zeros_like(zero_gradient)
        for label, res in per_attack.items():
            if label != "deepfool":
                worse |= torch.isfinite(reference) & (res.distance > reference * (1 + WORSE_THAN_DEEPFOOL))
        flags["worse_than_deepfool"] = int(worse.sum())
    return AttackResult(
        adv=best_adv,
        distance=best_dist,
        success=success,
        adv_class=best_class,
        labels=labels,
        forwards=cm.forwards,
        backwards=cm.backwards,
        seconds=time.perf_counter() - clock,
        best_attack=best_name,
        per_attack=per_attack,
        flags=flags,
    )


def robustness(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None = None,
    *,
    attacks: Sequence[str] = ("deepfool", "ddn", "fmn", "alma"),
    budget: str = "standard",
    steps: int | None = None,
    batch_size: int | None = None,
    quiet: bool | None = None,
    patience: int | str | None = "auto",
    line_search_steps: int = 20,
    polish_steps: int = 2,
    levels: int | None = None,
) -> AttackResult:
    """Robustness ρ(x): the L2 distance to the nearest decision boundary, as the per-sample
    minimum over an ensemble of verified minimal-norm attacks (Etmann et al. 2019, D5).

    ``ρ(x) = min { ‖δ‖₂ : argmax Ψ(x + δ) ≠ y, x + δ ∈ [0, 1]^d }``; every attack gives an upper
    bound, and the ensemble keeps the smallest *verified* one per sample. Attacks run in the
    given order; FMN and ALMA start from the best point found so far, DDN starts from x (from
    DeepFool's point it gets stuck in DeepFool's basin: see :data:`ATTACKS`), the budget's extra
    runs start from x (:data:`BUDGETS`), every attack's best point is moved onto the boundary by a
    line search towards x and re-verified, and with ``patience`` a sample whose best distance
    stops improving skips to the small-step tail of its attack's schedule and stops when it
    stalls there (easy samples do not pay for hard ones, and no sample is stopped while its
    step size is still large).

    Args:
        model: classifier returning logits (N, K) for inputs in [0, 1]; its train/eval mode and
            parameters' ``requires_grad`` flags are restored afterwards.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        labels: classes (N,) to move away from; ``None`` (the paper's ρ) uses the predicted
            class. With true labels, misclassified samples get distance 0.
        attacks: names among ``deepfool``, ``ddn``, ``fmn``, ``alma``, ``carlini_wagner``.
        budget: ``"fast"`` (100 steps per attack), ``"standard"`` (1000 steps, plus a
            cold-started copy of FMN) or ``"thorough"`` (``standard`` plus a cold DDN on the
            logit margin); see :data:`BUDGETS`. Extra runs are added only for requested attacks.
        steps: override the budget's steps per attack.
        batch_size: attack the inputs in chunks of this size (memory).
        quiet: hide the progress bar (default: ``SALIGN_QUIET``, or no TTY).
        patience: early-exit window in steps (``"auto"``: a tenth of the steps, at least 50;
            ``None``: off): a sample whose best distance improved by less than 0.1% over the
            last window jumps to the last window of the attack's step-size schedule, restarting
            from its best point; if it stalls there too (or the schedule ends) it stops.
            Applies to DDN and FMN; DeepFool, C&W and ALMA run all their steps.
        line_search_steps: bisection steps moving each best point onto the boundary.
        polish_steps: rounds of the final polish, run once after the last attack from the best
            point over all attacks (a DeepFool step from x with the gradients at that point,
            then a line search; 0 turns it off). Every attack's best point is line-searched
            onto the boundary.
        levels: quantise adversarial points to this many levels (e.g. 256) and verify after
            quantisation.

    Returns:
        An :class:`AttackResult` whose ``best_attack`` names the winner per sample and whose
        ``per_attack`` holds each attack's own verified result. Sanity flags (zero gradients,
        non-finite logits, samples without an adversarial point, non-determinism, attacks worse
        than DeepFool) are counted in ``flags`` and warned.
    """
    if isinstance(attacks, str):
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    attacks = list(attacks)
    if not attacks:
        raise InputError("attacks must name at least one attack")
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise InputError(f"unknown attack(s) {unknown}; choose from {sorted(ATTACKS)}")
    if budget not in BUDGETS:
        raise InputError(f"budget must be one of {sorted(BUDGETS)}, got {budget!r}")
    budget_steps, extra_runs = BUDGETS[budget]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    steps = budget_steps if steps is None else steps
    if patience == "auto":
        patience = max(50, steps // 10)
    elif patience is not None and (not isinstance(patience, int) or patience < 1):
        raise InputError(f"patience must be a positive integer, 'auto' or None, got {patience!r}")
    plan: list[tuple[str, str, bool, dict[str, Any]]] = [
        (name, name, ATTACKS[name][1], {}) for name in dict.fromkeys(attacks)
    ]
    plan += [(label, name, False, dict(extra)) for label, name, extra in extra_runs if name in attacks]
    model, x, labels = prepare(model, x, labels, levels=levels)
    parts = []
    slices = chunks(x.shape[0], batch_size)
    with (
        eval_mode(model),
        frozen_parameters(model),
        progress_bar(desc="robustness", total=len(slices) * len(plan), quiet=quiet) as bar,
    ):
        for chunk in slices:
            parts.append(
                _attack_chunk(
                    model,
                    x[chunk],
                    None if labels is None else labels[chunk],
                    plan,
                    steps,
                    patience,  # type: ignore[arg-type]
                    line_search_steps,
                    polish_steps,
                    levels,
                    bar,
                )
            )
    result = concat_results(parts)
    warn_flags("robustness", result.flags, len(result))
    return result


__all__ = ["ATTACKS", "BUDGETS", "robustness"]
