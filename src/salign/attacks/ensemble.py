"""ρ(x) by a verified ensemble of minimal-norm L2 attacks (Etmann et al. 2019, D5).

The ensemble is a *plan*: a list of :class:`PlannedRun` (which attack with which options, where
it starts, whether it is polished; :func:`default_plan` builds it from the attacks and the budget),
executed by :func:`_run_plan`, a short loop over the plan
that keeps two pools of verified best points: the overall best, and the best of the restart
chain.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from salign._norms import parse_norm
from salign._progress import progress_bar
from salign._validation import eval_mode
from salign.attacks._engine import Attack, Refinement, Start, attack_chunk, count_flags, warn_flags
from salign.attacks._model import CountingModel, chunks, clean_forward, frozen_parameters, prepare
from salign.attacks._ops import batch_view
from salign.attacks.alma import ALMA
from salign.attacks.apgd import APGD
from salign.attacks.carlini_wagner import CarliniWagner
from salign.attacks.ddn import DDN
from salign.attacks.deepfool import DeepFool
from salign.attacks.fab import FAB
from salign.attacks.fmn import FMN
from salign.attacks.result import AttackResult, concat_results
from salign.errors import InputError

#: The attacks :func:`robustness` runs by default, per norm (L1 and L∞: the attacks with an Lp
#: form). FAB-T comes before FMN in L1 / L∞: on the 7×7 MNIST MLPs of docs/benchmarks/exact.md
#: every sample that DeepFool → FMN left > 0.1% above the exact ρ had reached the wrong rival's
#: boundary; FAB-T visits each rival's, and FMN then refines the best of them. In L2 a short FAB-T
#: (:data:`FAB_T`) runs after ALMA, cold: the runs before it are unchanged, and it moves a sample
#: only where it lands closer (on the penalised 7×7 MLP one sample 2.5% above the exact ρ).
#: L1 adds ALMA with the L1 distance after FMN, warm-started like it (and like it in the restart
#: chain and the descents after the probes): without it, on 200 MNIST test images of the plain
#: SmallNet the ensemble's median was 1.014 × the per-sample best over every peer, adv-lib's
#: ALMA-L1 closer on 10 of the 12 samples we left > 0.1% above it; with it 1.0000 (the penalised
#: net: 1.0056 both times, but 92% of samples within 1% of their best instead of 79%), for 28%
#: more model calls (docs/benchmarks/attacks-lp.md).
DEFAULT_ATTACKS: dict[float, tuple[str, ...]] = {
    2.0: ("deepfool", "ddn", "fmn", "alma", "fab"),
    math.inf: ("deepfool", "fab", "fmn", "apgd"),
    1.0: ("deepfool", "fab", "fmn", "alma", "apgd"),
}

#: The attacks :func:`robustness` can run, by name.
ATTACKS: dict[str, type[Attack]] = {
    "deepfool": DeepFool,
    "ddn": DDN,
    "fmn": FMN,
    "alma": ALMA,
    "carlini_wagner": CarliniWagner,
    "fab": FAB,
    "apgd": APGD,
}

#: Attacks that run as *probes* after every other run, whatever their place in ``attacks``:
#: APGD at ε = (1 − η) × the best distance so far, per sample, from a random point of that
#: ball (:data:`APGD_STEPS` steps), in rounds (:data:`PROBES`): each (η, loss) of a round is one
#: run below the best point of the runs before, with a random start of its own (seed = its
#: index), and after each round the main chain's warm-started attacks (:data:`WARM_STARTED`:
#: FMN, in L1 also ALMA) descend from the best points (a short run, steps /
#: :data:`SHORT_CHAIN_DIVISOR`; the second and third descents only on the samples that moved
#: since the one before). A minimal-norm
#: attack follows one path to the boundary; APGD asks whether *any* point of a slightly
#: smaller ball is misclassified, and where it finds one, that point often lies in another
#: basin of the boundary, which the descent then follows down. η = 1e-3 finds the larger
#: gains, 1e-4 the points just below the best one. Whether a start succeeds is a matter of
#: chance on the samples that matter, and which loss works depends on the sample: on the
#: λ = 1 SmallNet one MNIST test image that every minimal-norm attack put 0.15% beyond a point
#: APGD found (L∞) was broken by 4 of 20 APGD-DLR starts of ours (6 of 20 of pyautoattack's)
#: and by no APGD-CE start; another that they put 11% beyond (L1) by 6 of 10 APGD-CE starts
#: (pyautoattack: 5) and by no DLR start. Hence three rounds of both losses at the standard
#: budget. The descent, measured: on the four MNIST test images where pyautoattack's APGD at
#: ε = our median still broke a sample we put 0.1–0.5% beyond ε, 8 copies each with their own
#: random starts, the probes alone left 1 of 8 copies within ε, with a full-length FMN after
#: each round 5–8 of 8 (one sample ended 20% below ε); on 25 images per net a short FMN gave
#: the same medians at a third of the extra cost. On 200 MNIST test images per SmallNet the
#: descents lowered the ensemble's median by 0.8% / 1.2% (L∞) and 2.4% / 3.6% (L1) for 7–11%
#: more forwards, and APGD at ε = our median (seed 0) breaks no sample we put beyond ε
#: (docs/benchmarks/attacks-lp.md).
PROBED = frozenset({"apgd"})
PROBES: dict[str, tuple[tuple[tuple[float, str], ...], ...]] = {
    "fast": (((1e-3, "ce"), (1e-3, "dlr")),),
    "standard": (((1e-3, "ce"), (1e-3, "dlr")), *(((1e-4, "ce"), (1e-4, "dlr")),) * 2),
    "thorough": (*(((1e-3, "ce"), (1e-3, "dlr")),) * 2, *(((1e-4, "ce"), (1e-4, "dlr")),) * 3),
}

#: APGD's iterations in a probe (the paper's 100); its cap does not follow the budget.
APGD_STEPS = 100

#: Attacks the ensemble warm-starts from the best point so far. DDN runs cold although it
#: accepts a start: from DeepFool's point it settles in DeepFool's basin. FMN and ALMA refine the
#: best point so far, which is polished after every cold attack. The measurements behind this
#: and every other choice of the ensemble: docs/benchmarks/attacks.md, "tuned options".
WARM_STARTED = frozenset({"fmn", "alma"})

#: Norms in which ALMA's two runs swap their starts when the budget has a restart chain: the
#: long run starts from x (and polishes its own point) and the chain's short run refines the
#: best point so far. Warm-started, the long ALMA stayed in the basin of the best point; on the
#: held-out MNIST test images 1000–1099 (benchmarks/alma_start_check.py) the swap put 99% / 99%
#: of the samples within 1% of the per-sample best over four variants instead of 86% / 85%, the
#: worst +1.9% / +1.2% instead of +5.6% / +8.4%, the mean ratio 1.0006 / 1.0008 instead of
#: 1.0032 / 1.0042 (plain / regularised SmallNet), at +1.7% forwards. In L1 the same swap was
#: even (nearer on 6 / 16 samples, farther on 9 / 17), so L1 keeps the warm start.
ALMA_FROM_X = frozenset({2.0})

#: Our tuning of each attack's options for the ensemble (the public attacks keep the papers'
#: defaults, but for FMN's guarded ε search, on in both); each was chosen on held-out MNIST
#: test images, not on the benchmark's: DDN switches to the logit margin in the second half of
#: its schedule, FMN takes larger steps (α₀ = 10), ALMA's first step moves 0.125.
TUNED: dict[str, dict[str, Any]] = {
    "ddn": {"loss": "ce_then_margin"},
    "fmn": {"alpha_init": 10.0},
    "alma": {"init_lr_distance": 0.125},
}

#: FAB-T in the ensemble, per norm: (rival classes targeted, budget steps per FAB iteration).
#: L∞ / L1: the 9 highest other logits with 100 iterations each at the standard budget (the
#: paper's iterations; as much as one 1000-step FMN run). L2: the 2 highest with 30 each, the
#: cheapest setting that brought every sample of docs/benchmarks/exact.md within 0.1% of the
#: exact ρ (about +6% model calls over the L2 ensemble without it; 3 × 30 and 9 × 100 did no better).
FAB_T: dict[float, tuple[int, int]] = {2.0: (2, 33), math.inf: (9, 10), 1.0: (9, 10)}

#: An extra run of a budget: (label, attack, options on top of :data:`TUNED`, member of the
#: restart chain). It runs only when its attack is among the requested ones.
ExtraRun = tuple[str, str, dict[str, Any], bool]

#: The restart chain runs with this fraction of the steps (dropped below 10 steps).
SHORT_CHAIN_DIVISOR = 10
_SHORT_CHAIN: tuple[ExtraRun, ...] = tuple(
    (f"{name}_short", name, {}, True) for name in ("ddn", "fmn", "alma")
)

#: budget -> (steps per attack, extra runs after the requested attacks). A chain member belongs
#: to the *restart chain*, a second, independent pass of the requested attacks in their order
#: with a tenth of the steps each: its warm-started members start from the chain's own best
#: point (initially DeepFool's), not from the overall best. On the gradient-regularised MNIST
#: SmallNet the attacks settle in different local minima per sample, and a short chain lands in
#: other minima than the long one. ``thorough`` also adds a cold FMN copy and a cold DDN on the
#: logit margin, a loss that settles in other minima than the cross-entropy.
BUDGETS: dict[str, tuple[int, tuple[ExtraRun, ...]]] = {
    "fast": (100, ()),
    "standard": (1000, _SHORT_CHAIN),
    "thorough": (
        1000,
        (("fmn_cold", "fmn", {}, False), ("ddn_margin", "ddn", {"loss": "margin"}, False), *_SHORT_CHAIN),
    ),
}

#: Extra runs of the ``standard`` and ``thorough`` budgets per norm, L1 and L∞ (``thorough``
#: has the cold FMN already): a cold FMN. The warm-started FMN stays in the basin of the best
#: point so far (DeepFool's, FAB's); on small random ReLU MLPs a cold FMN found the exact L∞ minimum where
#: every warm run ended 1.4–1.9× above it (docs/benchmarks/exact.md). L1 adds a cold FMN with
#: the paper's options that runs its whole schedule (``fmn_paper``, in :data:`FULL_LENGTH`): on
#: the gradient-regularised SmallNet the L1 minima are many, and without it the ensemble's
#: median was 1.027 × the per-sample best over every peer on 200 images, the paper's FMN at
#: 1000 steps winning where ours stopped early (docs/benchmarks/attacks-lp.md).
LP_EXTRA: dict[float, tuple[ExtraRun, ...]] = {
    math.inf: (("fmn_cold", "fmn", {}, False),),
    1.0: (("fmn_cold", "fmn", {}, False), ("fmn_paper", "fmn", {"guarded_search": False}, False)),
}

#: Extra runs (by label) that never exit early.
FULL_LENGTH = frozenset({"fmn_paper"})

#: Attacks that always run all their steps in the ensemble. ALMA's multipliers adapt over long
#: stretches without a new best point, and early exit makes it worse.
NO_EARLY_EXIT = frozenset({"deepfool", "carlini_wagner", "alma", "fab", "apgd"})

#: Relative margin above DeepFool's distance at which an attack is flagged "worse_than_deepfool".
WORSE_THAN_DEEPFOOL = 1e-3

#: DeepFool converges in a handful of iterations; its cap does not follow the budget.
DEEPFOOL_STEPS = 50


@dataclass(frozen=True)
class PlannedRun:
    """One run of the ensemble's plan.

    Attributes:
        label: its key in ``per_attack`` and ``best_attack``.
        attack: the attack with its options.
        start: ``"x"`` (cold), ``"best"`` (the best verified point over every run so far) or
            ``"chain"`` (the restart chain's best point).
        chain: whether its result joins the restart chain's pool (DeepFool's seeds it).
        polish: ``"own"``: polish this run's best point; ``"best"``: first merge the best point
            over every run so far, then polish (the ensemble's final polish); ``"none"``: line
            search only.
        patience: early-exit window (None: all steps).
    """

    label: str
    attack: Attack
    start: Literal["x", "best", "chain"] = "x"
    chain: bool = False
    polish: Literal["none", "own", "best"] = "none"
    patience: int | None = None


def tuned_attack(name: str, steps: int, *, norm: float = 2.0, **extra: Any) -> Attack:
    """The ensemble's version of attack ``name`` at ``steps`` steps in the Lp ``norm`` (see
    :data:`TUNED`; its values were measured in L2: in L1 and L∞ the attacks keep their public
    defaults)."""
    if name == "deepfool":
        return DeepFool(norm=norm, steps=min(DEEPFOOL_STEPS, max(steps, 1)), clamp_each_step=False)
    if name == "apgd":
        return APGD(norm=norm, steps=min(APGD_STEPS, steps), **{"relative_eps": 1 - 1e-3, **extra})
    if name == "fab":
        targets, divisor = FAB_T[norm]
        return FAB(norm=norm, steps=max(steps // divisor, 10), **{"target_classes": targets, **extra})
    if norm != 2:
        return ATTACKS[name](norm=norm, steps=steps, **extra)  # type: ignore[call-arg]
    if name == "carlini_wagner":
        rounds = 5 if steps >= 500 else 3
        return CarliniWagner(steps=max(steps // rounds, 1), binary_search_steps=rounds, initial_const=0.1)
    options: dict[str, Any] = {**TUNED.get(name, {}), **extra}
    if name == "alma":
        options.setdefault("alpha", 0.9 if steps >= 500 else 0.5)
    return ATTACKS[name](steps=steps, **options)  # type: ignore[call-arg]


def default_plan(
    attacks: Sequence[str], budget: str, steps: int, patience: int | str | None, norm: float = 2.0
) -> list[PlannedRun]:
    """The requested attacks in order (the main chain), then the budget's extra runs for them,
    then the probes (:data:`PROBED`) if requested, in rounds, each followed by a descent of the
    main chain's warm-started attacks from the best points; all in the Lp ``norm``.

    Cold runs are polished with their own point, the last run with the best point over all.
    In the norms of :data:`ALMA_FROM_X`, ALMA's long run is cold and its restart-chain run starts
    from the best point so far."""
    short = steps // SHORT_CHAIN_DIVISOR
    extras = BUDGETS[budget][1]
    if budget != "fast":  # thorough has its own cold FMN, but not L1's full-length one
        planned_labels = {label for label, *_ in extras}
        extras = tuple(e for e in LP_EXTRA.get(norm, ()) if e[0] not in planned_labels) + extras
    swap_alma = norm in ALMA_FROM_X and short >= 10 and any(n == "alma" and c for _, n, _, c in extras)

    def planned(label: str, name: str, n: int, extra: dict[str, Any], start: str, chain: bool) -> PlannedRun:
        pat = max(50, n // 10) if patience == "auto" else patience
        pat = None if name in NO_EARLY_EXIT or label in FULL_LENGTH or not isinstance(pat, int) else pat
        cold_alma = name == "alma" and start == "x"
        polish = "none" if (name in WARM_STARTED and not cold_alma) or name in PROBED else "own"
        attack = tuned_attack(name, n, norm=norm, **extra)
        return PlannedRun(label, attack, start, chain, polish, pat)  # type: ignore[arg-type]

    def warm(name: str, pool: str) -> str:
        if name == "alma" and swap_alma:
            return "x" if pool == "best" else "best"
        return pool if name in WARM_STARTED else "x"

    main = [a for a in dict.fromkeys(attacks) if a not in PROBED]
    runs = [planned(a, a, steps, {}, warm(a, "best"), a == "deepfool") for a in main]
    for label, name, extra, chain in extras:
        if name not in attacks or norm not in ATTACKS[name].norms:
            continue
        if not chain:
            runs.append(planned(label, name, steps, extra, "x", False))
        elif short >= 10:
            runs.append(planned(label, name, short, extra, warm(name, "chain"), True))
    if "apgd" in attacks:
        seen: dict[str, int] = {}

        def numbered(name: str) -> str:
            seen[name] = seen.get(name, 0) + 1
            return name + (f"_{seen[name]}" if seen[name] > 1 else "")

        descents = [a for a in main if a in WARM_STARTED]
        descent = min(steps, max(short, 10))
        seed = 0
        for probe_round in PROBES[budget]:
            for shrink, loss in probe_round:
                extra = {"loss": loss, "seed": seed, "relative_eps": 1 - shrink}
                runs.append(planned(numbered(f"apgd_{loss}"), "apgd", steps, extra, "best", False))
                seed += 1
            runs += [planned(numbered(f"{a}_probed"), a, descent, {}, "best", False) for a in descents]
    runs[-1] = dataclasses.replace(runs[-1], polish="best")
    return runs


class _Pool:
    """Verified best points of several runs: distance, point, class and which run won."""

    def __init__(self, x: Tensor, attacked: Tensor, clean_class: Tensor) -> None:
        inf = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
        self.distance = torch.where(attacked, inf, 0.0)
        self.adv = x.clone()
        self.adv_class = clean_class.clone()
        self.winner = torch.where(attacked, -1, -2)  # run index; -1: none yet, -2: misclassified

    def start(self) -> Start | None:
        return Start(self.adv, self.distance) if bool(torch.isfinite(self.distance).any()) else None

    def merge(self, result: AttackResult, run: int) -> None:
        better = result.distance < self.distance
        self.distance = torch.where(better, result.distance, self.distance)
        self.adv = torch.where(batch_view(better, self.adv), result.adv, self.adv)
        self.adv_class = torch.where(better, result.adv_class, self.adv_class)
        self.winner = torch.where(better, run, self.winner)


def _run_plan(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None,
    runs: list[PlannedRun],
    refinement: Refinement,
    bar: Any,
) -> AttackResult:
    """Execute the plan on one chunk; the result is the per-sample best over its runs."""
    clock = time.perf_counter()
    cm = CountingModel(model)
    chunk = clean_forward(cm, x, labels)
    skipped = len(runs)
    runs = [run for run in runs if run.attack.applies_to(chunk.num_classes)]
    skipped -= len(runs)
    if not runs:
        raise InputError(f"no run of the plan applies to a model with {chunk.num_classes} classes")
    if skipped and runs[-1].polish != "best":  # the final polish was planned on a skipped run
        runs[-1] = dataclasses.replace(runs[-1], polish="best")
    bar.update(skipped)
    attacked = chunk.attacked
    best, chain = _Pool(x, attacked, chunk.clean_class), _Pool(x, attacked, chunk.clean_class)
    per_attack: dict[str, AttackResult] = {}
    flags = {k: torch.zeros_like(attacked) for k in ("zero_gradient", "nonfinite_logits", "nondeterministic")}
    # the best points each run started from (as the runs that had found them): an identical run
    # (attacks are deterministic, APGD's random start included) from the same point would only
    # repeat itself, so it skips those samples
    started: dict[tuple[Attack, int | None], Tensor] = {}
    for i, run in enumerate(runs):
        start = None if run.start == "x" else (best if run.start == "best" else chain).start()
        only = None
        if run.start == "best" and start is not None:
            identity = (run.attack, run.patience)
            if identity in started:
                only = best.winner != started[identity]
            started[identity] = best.winner.clone()
        polish_steps = refinement.polish_steps if run.polish != "none" else 0
        result, per_sample = attack_chunk(
            run.attack,
            cm,
            chunk,
            start,
            only=only,
            patience=run.patience,
            refinement=dataclasses.replace(refinement, polish_steps=polish_steps),
            polish_from=Start(best.adv, best.distance) if run.polish == "best" and polish_steps else None,
        )
        for key, value in flags.items():
            value |= per_sample[key]
        per_attack[run.label] = result
        if run.chain:
            chain.merge(result, i)
        best.merge(result, i)
        bar.update(1)
    flags["not_found"] = ~torch.isfinite(best.distance)
    counts = count_flags(flags)
    counts["worse_than_deepfool"] = _worse_than_deepfool(per_attack)
    names = [run.label for run in runs]
    return AttackResult(
        adv=best.adv,
        distance=best.distance,
        success=torch.isfinite(best.distance),
        adv_class=best.adv_class,
        labels=chunk.labels,
        forwards=cm.forwards,
        backwards=cm.backwards,
        seconds=time.perf_counter() - clock,
        best_attack=[None if w == -1 else "clean" if w == -2 else names[w] for w in best.winner.tolist()],
        per_attack=per_attack,
        flags=counts,
        norm=runs[0].attack.distance_norm,
    )


def _worse_than_deepfool(per_attack: dict[str, AttackResult]) -> int:
    """Samples where some run ended more than :data:`WORSE_THAN_DEEPFOOL` farther than DeepFool."""
    if "deepfool" not in per_attack:
        return 0
    reference = per_attack["deepfool"].distance
    worse = torch.zeros_like(reference, dtype=torch.bool)
    for label, res in per_attack.items():
        if label != "deepfool":
            worse |= torch.isfinite(reference) & (res.distance > reference * (1 + WORSE_THAN_DEEPFOOL))
    return int(worse.sum())


def _check_arguments(
    attacks: Sequence[str] | str | None, budget: str, steps: object, patience: object, norm: float
) -> list[str]:
    if attacks is None:
        attacks = DEFAULT_ATTACKS[norm]
    if isinstance(attacks, str):
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    names = list(attacks)
    if not names:
        raise InputError("attacks must name at least one attack")
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise InputError(f"unknown attack(s) {unknown}; choose from {sorted(ATTACKS)}")
    if all(a in PROBED for a in names):
        raise InputError(
            f"{names} only probe below the best point of the other attacks: list at least one "
            "minimal-norm attack as well"
        )
    wrong = [a for a in names if norm not in ATTACKS[a].norms]
    if wrong:
        able = sorted(a for a, cls in ATTACKS.items() if norm in cls.norms)
        raise InputError(f"attack(s) {wrong} do not minimise the norm {norm:g}; for it choose from {able}")
    if budget not in BUDGETS:
        raise InputError(f"budget must be one of {sorted(BUDGETS)}, got {budget!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if patience not in ("auto", None) and (
        isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
    ):
        raise InputError(f"patience must be a positive integer, 'auto' or None, got {patience!r}")
    return names


def robustness(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None = None,
    *,
    attacks: Sequence[str] | None = None,
    budget: str = "standard",
    steps: int | None = None,
    batch_size: int | None = None,
    quiet: bool | None = None,
    patience: int | str | None = "auto",
    line_search_steps: int = 20,
    polish_steps: int = 2,
    levels: int | None = None,
    plan: Sequence[PlannedRun] | None = None,
    norm: float | str = 2,
) -> AttackResult:
    """Robustness ρ(x): the distance (L2, or L∞ / L1) to the nearest decision boundary, as the
    per-sample minimum over an ensemble of verified minimal-norm attacks (Etmann et al. 2019, D5).

    ``ρ_p(x) = min { ‖δ‖_p : argmax Ψ(x + δ) ≠ y, x + δ ∈ [0, 1]^d }``; every attack gives an upper
    bound, and the ensemble keeps the smallest *verified* one per sample. The attacks run with
    our tuned options (:data:`TUNED`; the public attacks keep the papers' defaults, FMN with its guarded ε search) in the given
    order; FMN and ALMA start from the best point found so far, DDN starts from x (from
    DeepFool's point it gets stuck in DeepFool's basin: see :data:`WARM_STARTED`), the budget's
    extra runs start from x or form a restart chain with its own best point (:data:`BUDGETS`;
    in L2 the long ALMA starts from x and the chain's short one from the best point so far,
    :data:`ALMA_FROM_X`),
    every attack's best point is moved onto the boundary by a line search towards x and
    re-verified, and with ``patience`` a sample whose best distance stops improving skips to the
    small-step tail of its attack's schedule and stops when it stalls there (easy samples do not
    pay for hard ones, and no sample is stopped while its step size is still large).
    :func:`default_plan` lists the runs; ``plan`` replaces them.

    Args:
        model: classifier returning logits (N, K) for inputs in [0, 1]; its train/eval mode and
            parameters' ``requires_grad`` flags are restored afterwards.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        labels: classes (N,) to move away from; ``None`` (the paper's ρ) uses the predicted
            class. With true labels, misclassified samples get distance 0.
        attacks: names among ``deepfool``, ``ddn``, ``fmn``, ``alma``, ``carlini_wagner``,
            ``fab``, ``apgd`` (default: :data:`DEFAULT_ATTACKS` of the norm; in L2: DeepFool, DDN,
            FMN, ALMA, then a short FAB-T against the 2 highest other logits; in L1 and L∞:
            DeepFool, FAB-T against the 9 highest other logits, FMN (in L1 then ALMA)
            warm-started from the best point, and at the standard budget a cold FMN, and in L1 a
            full-length FMN with the paper's options, :data:`LP_EXTRA`; then the APGD probes). ``apgd`` always runs
            last, as rounds of probes just below each sample's best point, each round
            followed by a short descent of the warm-started attacks (FMN, ALMA) from the best
            points (:data:`PROBED`, :data:`PROBES`).
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
        polish_steps: rounds of the polish of cold-started runs and of the final polish, run
            after the last attack from the best point over all attacks (a DeepFool step from x
            with the gradients at that point, then a line search; 0 turns it off).
        levels: quantise adversarial points to this many levels (e.g. 256) and verify after
            quantisation.
        plan: run these :class:`PlannedRun` s instead of the default plan of ``attacks``,
            ``budget``, ``steps`` and ``patience`` (which are then ignored), e.g. to compare
            ensembles.
        norm: 2 (default, the paper's), ``float("inf")`` / ``"inf"`` or 1: the norm of ρ.

    Returns:
        An :class:`AttackResult` whose ``best_attack`` names the winner per sample and whose
        ``per_attack`` holds each attack's own verified result. Sanity flags (zero gradients,
        non-finite logits, samples without an adversarial point, non-determinism, attacks worse
        than DeepFool) are counted in ``flags`` and warned.
    """
    p = parse_norm(norm)
    if plan is None:
        names = _check_arguments(attacks, budget, steps, patience, p)
        runs = default_plan(names, budget, BUDGETS[budget][0] if steps is None else steps, patience, p)
    else:
        runs = list(plan)
        if not runs or not all(isinstance(r, PlannedRun) for r in runs):
            raise InputError("plan must be a non-empty sequence of PlannedRun")
        if len({r.label for r in runs}) < len(runs):
            raise InputError(f"plan labels must be unique, got {[r.label for r in runs]}")
        if any(r.attack.distance_norm != p for r in runs):
            raise InputError(f"every run of the plan must minimise norm={p:g} (the norm argument)")
    refinement = Refinement(line_search_steps, polish_steps, levels)
    model, x, labels, _ = prepare(model, x, labels, levels=levels)
    slices = chunks(x.shape[0], batch_size)
    parts = []
    with (
        eval_mode(model),
        frozen_parameters(model),
        progress_bar(desc="robustness", total=len(slices) * len(runs), quiet=quiet) as bar,
    ):
        for chunk in slices:
            parts.append(
                _run_plan(model, x[chunk], None if labels is None else labels[chunk], runs, refinement, bar)
            )
    result = concat_results(parts)
    warn_flags("robustness", result.flags, len(result))
    return result


__all__ = [
    "ATTACKS",
    "BUDGETS",
    "DEFAULT_ATTACKS",
    "FAB_T",
    "FULL_LENGTH",
    "LP_EXTRA",
    "PROBED",
    "PROBES",
    "TUNED",
    "PlannedRun",
    "default_plan",
    "robustness",
    "tuned_attack",
]
