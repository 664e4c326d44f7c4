"""ρ(x) by a verified ensemble of minimal-norm L2 attacks (Etmann et al. 2019, D5)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

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
#: ``(label, attack, options, chain)``; it runs only when ``attack`` is among the requested
#: attacks. ``chain=None``: it starts from x (cold). ``chain="short"``: it belongs to a
#: *restart chain*, a second, independent pass of the requested attacks in their order with a
#: tenth of the steps each (:data:`SHORT_CHAIN_DIVISOR`; dropped below 10 steps): its
#: warm-started members start from the chain's own best point (initially DeepFool's), not
#: from the main chain's. On the gradient-regularised
#: MNIST SmallNet the attacks settle in different local minima per sample, and a short chain
#: lands in other minima than the long one. ``standard`` adds a 100-step chain (DDN → FMN →
#: ALMA). It replaced a cold 1000-step FMN copy at about the same number of forwards: on the
#: previous benchmark images (MNIST test 0–199) the ensemble went from 1.0131 to 1.0005 of the
#: best-known median; on held-out images 1000–1099, 0.99 instead of 0.97 of the samples ended
#: within 1% of the best-known distance (plain SmallNet: 0.97 both); docs/benchmarks/attacks.md
#: has the run on fresh images 200–399. ``thorough`` also adds the cold FMN copy and a
#: cold DDN on the logit margin, a loss that settles in other minima than the cross-entropy.
ExtraRun = tuple[str, str, dict[str, Any], str | None]
SHORT_CHAIN_DIVISOR = 10
_SHORT_CHAIN: tuple[ExtraRun, ...] = tuple(
    (f"{name}_short", name, {}, "short") for name in ("ddn", "fmn", "alma")
)
BUDGETS: dict[str, tuple[int, tuple[ExtraRun, ...]]] = {
    "fast": (100, ()),
    "standard": (1000, _SHORT_CHAIN),
    "thorough": (
        1000,
        (("fmn_cold", "fmn", {}, None), ("ddn_margin", "ddn", {"loss": "margin"}, None), *_SHORT_CHAIN),
    ),
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


class _Run(NamedTuple):
    """One attack run of the plan: its options include the steps; ``chain`` names the restart
    chain it belongs to (None: the main chain, or a cold extra run)."""

    label: str
    name: str
    warm: bool
    options: dict[str, Any]
    chain: str | None
    patience: int | None


def _plan(attacks: list[str], budget: str, steps: int, patience: int | str | None) -> list[_Run]:
    """The requested attacks (the main chain), then the budget's extra runs for them."""
    _, extra_runs = BUDGETS[budget]

    def run(label: str, name: str, warm: bool, extra: dict[str, Any], chain: str | None, n: int) -> _Run:
        options = {**_options(name, n), **extra}
        pat = max(50, n // 10) if patience == "auto" else patience
        return _Run(label, name, warm, options, chain, pat if isinstance(pat, int) else None)

    plan = [run(name, name, ATTACKS[name][1], {}, None, steps) for name in dict.fromkeys(attacks)]
    short = steps // SHORT_CHAIN_DIVISOR
    for label, name, extra, chain in extra_runs:
        if name not in attacks:
            continue
        if chain is None:
            plan.append(run(label, name, False, extra, None, steps))
        elif short >= 10:
            plan.append(run(label, name, ATTACKS[name][1], extra, chain, short))
    return plan


def _attack_chunk(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None,
    plan: list[_Run],
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
    # restart chains start from DeepFool's point (when DeepFool runs), as the main chain does;
    # the main chain's best point is the overall best (it runs first)
    chain_start = (best_dist.clone(), best_adv.clone())
    chain_best: dict[str, tuple[Tensor, Tensor]] = {}
    for run in plan:
        label, name, warm, chain = run.label, run.name, run.warm, run.chain
        impl, _ = ATTACKS[name]
        f0, b0, t0 = cm.forwards, cm.backwards, time.perf_counter()
        tracker = Tracker(x, labels, patience=None if name in NO_EARLY_EXIT else run.patience)
        tracker.best_dist[~attacked] = 0
        tracker.active &= attacked
        options = dict(run.options)
        start_dist, start_adv = (best_dist, best_adv) if chain is None else chain_best.get(chain, chain_start)
        if warm and bool(torch.isfinite(start_dist).any()):
            options["start"] = start_adv
            # the start point is verified: the attack's result can only improve on it
            tracker.best_dist = start_dist.clone()
            tracker.best_adv = start_adv.clone()
        impl(cm, x, labels, tracker, **options)
        last = run is plan[-1]
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
        if chain is not None:
            c_dist, c_adv = chain_best.get(chain, chain_start)
            c_better = verified["distance"] < c_dist
            chain_best[chain] = (
                torch.where(c_better, verified["distance"], c_dist),
                torch.where(batch_view(c_better, x), verified["adv"], c_adv),
            )
        elif name == "deepfool":
            chain_start = (verified["distance"].clone(), verified["adv"].clone())
        better = verified["distance"] < best_dist
        best_dist = torch.where(better, verified["distance"], best_dist)
        best_adv = torch.where(batch_view(better, x), verified["adv"], best_adv)
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
    runs start from x or form a restart chain with its own best point (:data:`BUDGETS`), every
    attack's best point is moved onto the boundary by a line search towards x and re-verified,
    and with ``patience`` a sample whose best distance stops improving skips to the small-step
    tail of its attack's schedule and stops when it stalls there (easy samples do not pay for
    hard ones, and no sample is stopped while its step size is still large).

    Args:
        model: classifier returning logits (N, K) for inputs in [0, 1]; its train/eval mode and
            parameters' ``requires_grad`` flags are restored afterwards.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        labels: classes (N,) to move away from; ``None`` (the paper's ρ) uses the predicted
            class. With true labels, misclassified samples get distance 0.
        attacks: names among ``deepfool``, ``ddn``, ``fmn``, ``alma``, ``carlini_wagner``.
        budget: ``"fast"`` (100 steps per attack), ``"standard"`` (1000 steps, then a
            restart chain of the requested DDN, FMN and ALMA with 100 steps each) or
            ``"thorough"`` (``standard`` plus a cold FMN and a cold DDN on the logit margin);
            see :data:`BUDGETS`. Extra runs are added only for requested attacks.
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
    budget_steps = BUDGETS[budget][0]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    steps = budget_steps if steps is None else steps
    if (
        patience != "auto"
        and patience is not None
        and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1)
    ):
        raise InputError(f"patience must be a positive integer, 'auto' or None, got {patience!r}")
    plan = _plan(attacks, budget, steps, patience)
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
