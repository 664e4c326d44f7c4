"""salign.attacks: exactness on linear models, verified success, costs, bad inputs, foolbox and adv-lib."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import salign
from _attacks_helpers import (
    GradModeLiar,
    Noisy,
    OutsideBoxOnly,
    WrongShape,
    exact_linear_rho,
    linear_problem,
    near_tie_linear_problem,
)
from salign.attacks import AttackResult, alma, carlini_wagner, ddn, deepfool, fab, fmn, robustness
from salign.errors import InputError, InputTypeError, ModelOutputError

pytestmark = pytest.mark.usefixtures("one_thread_module")


ATTACK_FNS = {
    "deepfool": deepfool,
    "ddn": ddn,
    "fmn": fmn,
    "alma": alma,
    "carlini_wagner": carlini_wagner,
    "fab": fab,
}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# --- exactness on geometry with a closed form --------------------------------------------------


#: The refinements robustness() turns on (the public attacks run the papers' algorithms without).
REFINED = {"line_search_steps": 20, "polish_steps": 2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(ATTACK_FNS))
def test_each_attack_finds_linear_rho_within_half_percent(name: str, dtype: torch.dtype) -> None:
    model, x, rho = linear_problem(dtype=dtype)
    steps = {"deepfool": 50, "carlini_wagner": 200, "fab": 100}.get(name, 1000)  # standard budget
    kwargs = {"binary_search_steps": 5} if name == "carlini_wagner" else {}
    res = ATTACK_FNS[name](model, x, steps=steps, **kwargs, **REFINED)
    assert isinstance(res, AttackResult)
    assert bool(res.success.all())
    rel = res.distance.double() / rho.double() - 1
    assert float(rel.min()) > -1e-4  # never below the true distance (verified points)
    assert float(rel.max()) < 5e-3
    assert res.adv.dtype == dtype
    # distance is the true distance of the returned point, which is adversarial
    torch.testing.assert_close(res.distance, (res.adv - x).flatten(1).norm(dim=1))
    assert bool((model(res.adv).argmax(1) != model(x).argmax(1)).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(ATTACK_FNS))
def test_paper_defaults_run_the_papers_algorithms_on_a_linear_model(name: str, dtype: torch.dtype) -> None:
    """Without our refinements: DeepFool lands at (1 + overshoot)·(ρ + 1e-4/‖w‖) (its overshoot
    of 0.02 and the authors' 1e-4 crossing term, the linearisation being exact); the iterative attacks return their best iterate, a
    verified point never inside ρ and, in the median, within 2% of it."""
    model, x, rho = linear_problem(dtype=dtype)
    kwargs = {"steps": 200, "binary_search_steps": 5} if name == "carlini_wagner" else {}
    res = _quiet(ATTACK_FNS[name], model, x, **kwargs)
    assert bool(res.success.all())
    rel = res.distance.double() / rho.double()
    if name == "deepfool":
        assert float(rel.min()) > 1.02 * (1 - 1e-6) and float(rel.max()) < 1.02 * 1.001
    else:
        assert float(rel.min()) > 1 - 1e-4
        assert float(rel.median()) < 1.02


def test_options_are_checked_and_named() -> None:
    model, x, _ = linear_problem(n=2)
    with pytest.raises(InputError, match=r"unknown option\(s\) \['gama'\]"):
        ddn(model, x, gama=0.1)
    with pytest.raises(InputError, match="loss must be one of"):
        salign.attacks.DDN(loss="hinge")
    with pytest.raises(InputError, match="does not take a warm start"):
        deepfool(model, x, start=x)
    with pytest.raises(InputError, match="polish_steps"):
        fmn(model, x, steps=2, polish_steps=-1)
    # the dataclass and the function are one attack
    a, b = salign.attacks.FMN(steps=20)(model, x), fmn(model, x, steps=20)
    torch.testing.assert_close(a.distance, b.distance)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_robustness_linear_within_a_tenth_of_a_percent(dtype: torch.dtype) -> None:
    model, x, rho = linear_problem(n=8, dtype=dtype, seed=1)
    res = robustness(model, x, quiet=True)
    rel = res.distance.double() / rho.double() - 1
    assert float(rel.abs().max()) < 1e-3
    assert set(res.per_attack) == {
        "deepfool",
        "ddn",
        "fmn",
        "alma",
        "fab",
        "ddn_short",
        "fmn_short",
        "alma_short",
    }
    stacked = torch.stack([r.distance for r in res.per_attack.values()])
    torch.testing.assert_close(res.distance, stacked.amin(0))
    assert all(name in res.per_attack for name in res.best_attack)
    assert res.flags["not_found"] == 0 and res.flags["worse_than_deepfool"] == 0
    assert res.forwards == sum(r.forwards for r in res.per_attack.values()) + len(x)  # + clean forward
    assert res.backwards == sum(r.backwards for r in res.per_attack.values())


# --- other norms: L∞ and L1 ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("norm", [math.inf, 1.0])
def test_lp_attacks_find_the_linear_rho(norm: float, dtype: torch.dtype) -> None:
    """Bias-free linear model, minimisers inside the box: ρ_p = min_j |f_j| / ‖w_j‖_q in closed
    form; DeepFool, FMN (and ALMA in L1) in that norm within 0.5% (never below: verified), the
    ensemble 0.1%."""
    from salign.attacks import ALMA, FMN, DeepFool
    from salign.attacks._ops import lp_norm

    model, x, w = near_tie_linear_problem(seed=1, dtype=dtype)
    rho = exact_linear_rho(w, x, norm)
    attacks = [DeepFool(norm=norm), FMN(norm=norm, guarded_search=True)]
    attacks += [ALMA(norm=norm)] if norm == 1 else []
    for attack in attacks:
        res = attack(model, x, **REFINED)
        assert bool(res.success.all()) and res.norm == norm, attack
        rel = res.distance.double() / rho.double() - 1
        assert float(rel.min()) > -1e-4 and float(rel.max()) < 5e-3, (attack.name, rel)
        torch.testing.assert_close(res.distance, lp_norm(res.adv - x, norm))
        assert bool((model(res.adv).argmax(1) != model(x).argmax(1)).all())
    ens = robustness(model, x, norm=norm, quiet=True)
    probes = {"apgd_ce", "apgd_dlr", "apgd_ce_2", "apgd_dlr_2", "apgd_ce_3", "apgd_dlr_3"}
    probes |= {"fmn_probed", "fmn_probed_2", "fmn_probed_3"}  # the descent after each round
    runs = {"deepfool", "fab", "fmn", "fmn_cold", "fmn_short"} | probes
    if norm == 1:  # ALMA in L1, as FMN; the paper's FMN
        runs |= {"alma", "alma_short", "alma_probed", "alma_probed_2", "alma_probed_3", "fmn_paper"}
    assert ens.norm == norm and set(ens.per_attack) == runs
    if norm == 1:  # the paper's FMN runs its whole schedule: 1 forward + 1 backward per step
        assert ens.per_attack["fmn_paper"].backwards == len(x) * 1000
    assert float((ens.distance.double() / rho.double() - 1).abs().max()) < 1e-3


def test_l1_projection_is_the_euclidean_one() -> None:
    """Soft thresholding at the sorted level equals a bisection on the threshold (Duchi et al.)."""
    from salign.attacks._ops import lp_norm, project_on_ball

    torch.manual_seed(0)
    delta = torch.randn(8, 1, 5, 5, dtype=torch.float64)
    radius = torch.rand(8, dtype=torch.float64) * 10  # some inside the ball already
    got = project_on_ball(delta, radius, 1.0)
    flat = delta.flatten(1)
    lo, hi = torch.zeros(8, dtype=torch.float64), flat.abs().amax(1)
    for _ in range(200):
        mid = (lo + hi) / 2
        over = (flat.abs() - mid[:, None]).clamp(min=0).sum(1) > radius
        lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
    inside = flat.abs().sum(1) <= radius
    theta = torch.where(inside, 0.0, hi)
    expected = flat.sign() * (flat.abs() - theta[:, None]).clamp(min=0)
    torch.testing.assert_close(got.flatten(1), expected, rtol=0, atol=1e-12)
    assert bool((lp_norm(got, 1.0) <= radius * (1 + 1e-12)).all())


def test_norms_are_checked_and_named() -> None:
    model, x, _ = linear_problem(n=2)
    with pytest.raises(InputError, match="norm must be 1, 2 or inf"):
        robustness(model, x, norm=3, quiet=True)
    with pytest.raises(InputError, match="L2 norm only"):
        ddn(model, x, norm="inf")
    with pytest.raises(
        InputError,
        match=r"alma minimises the L1 or L2 norm only, not norm=inf; for L∞ use deepfool, fmn, fab, apgd,",
    ):
        alma(model, x, norm="inf")
    assert alma(model, x, steps=5, norm="l1").norm == 1
    with pytest.raises(InputError, match=r"\['ddn'\] do not minimise the norm inf"):
        robustness(model, x, attacks=("deepfool", "ddn"), norm="inf", quiet=True)
    assert fmn(model, x, steps=5, norm="linf").norm == math.inf
    assert ddn(model, x, steps=5, norm=2).norm == 2


def test_robustness_is_reexported_from_salign() -> None:
    assert salign.robustness is robustness
    assert salign.AttackResult is AttackResult


# --- verified success ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deepfool", "ddn", "fmn", "alma", "fab"])
def test_grad_mode_liar_is_reported_as_not_found(name: str) -> None:
    torch.manual_seed(0)
    model = GradModeLiar(16).double()
    model.fc.weight.data.normal_()
    model.fc.bias.data.zero_()
    x = torch.full((4, 16), 0.5, dtype=torch.float64)
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match="no verified adversarial"):
        res = ATTACK_FNS[name](model, x, labels, steps=20)
    assert not bool(res.success.any())
    assert bool(torch.isinf(res.distance).all())
    torch.testing.assert_close(res.adv, x)
    assert res.flags["not_found"] == 4


def test_outside_box_only_model_is_not_fooled() -> None:
    x = torch.full((3, 10), 0.9, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="success rate below 100%"):
        res = robustness(OutsideBoxOnly(), x, steps=30, quiet=True)
    assert not bool(res.success.any())
    assert res.flags["not_found"] == 3
    assert bool(((res.adv >= 0) & (res.adv <= 1)).all())


def test_quantised_points_are_verified_after_quantisation() -> None:
    model, x, rho = linear_problem(n=5, seed=2)
    x = (x * 255).round() / 255  # 8-bit inputs
    rho = deepfool(model, x, **REFINED).distance  # ρ of the quantised inputs (exact here)
    res = _quiet(robustness, model, x, levels=256, steps=100, quiet=True)
    grid = res.adv * 255
    torch.testing.assert_close(grid, grid.round())
    assert bool(res.success.all())
    assert bool((model(res.adv).argmax(1) != model(x).argmax(1)).all())
    assert bool((res.distance >= rho * (1 - 1e-9)).all())
    assert bool((res.distance <= rho + 2 * 2**0.5 * x[0].numel() ** 0.5 / 255).all())


def test_nondeterministic_model_is_flagged() -> None:
    x = torch.full((6, 8), 0.5)
    with pytest.warns(RuntimeWarning, match="non-deterministic"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*zero input gradients")
        res = ddn(Noisy(), x, torch.zeros(6, dtype=torch.long), steps=5)
    assert res.flags["nondeterministic"] > 0


# --- costs, labels, chunking, warm start ------------------------------------------------------


def test_counts_are_exact_forward_and_backward_passes() -> None:
    model, x, _ = linear_problem(n=4)
    n = len(x)
    res = ddn(model, x, steps=30, line_search_steps=7, polish_steps=0)
    assert res.backwards == n * 30
    assert res.forwards == n * (1 + 30 + 7 + 2)  # clean + steps + line search + 2 verification
    res = ddn(model, x, steps=30, line_search_steps=7, polish_steps=1)
    # polish: 1 forward (it ranks the classes, and its graph gives the gradients), 4 backwards
    # (the label against each of the other 4 classes), 7 line search
    assert res.backwards == n * (30 + 4)
    assert res.forwards == n * (1 + 30 + 7 + 1 + 7 + 2)
    res = deepfool(model, x, candidates=2, line_search_steps=20)
    # one step is exact for a linear model: 2 forwards (start, adversarial), 2 backwards (the
    # label against each of the 2 rival classes)
    assert res.backwards == n * 2
    assert res.forwards == n * (1 + 2 + 20 + 2)  # + line search and verification


def test_labels_true_labels_and_misclassified_samples() -> None:
    model, x, rho = linear_problem(n=4, seed=3)
    pred = model(x).argmax(1)
    wrong = (pred + 1) % 5
    labels = torch.where(torch.arange(4) < 2, pred, wrong)
    res = robustness(model, x, labels, steps=50, quiet=True)
    assert res.distance[2:].eq(0).all() and res.success[2:].all()
    torch.testing.assert_close(res.distance[:2], rho[:2], rtol=1e-3, atol=0)
    torch.testing.assert_close(res.labels, labels)


def test_chunking_gives_the_same_result() -> None:
    model, x, _ = linear_problem(n=6, seed=4)
    whole = fmn(model, x, steps=60)
    parts = fmn(model, x, steps=60, batch_size=4)
    torch.testing.assert_close(whole.distance, parts.distance)
    assert parts.forwards == whole.forwards
    ens = robustness(model, x, steps=60, batch_size=4, quiet=True)
    assert len(ens.best_attack) == 6 and ens.per_attack["ddn"].distance.shape == (6,)


def test_early_exit_saves_passes_without_losing_quality() -> None:
    model, x, rho = linear_problem(n=6, seed=5)
    tuned = {"loss": "ce_then_margin", **REFINED}  # as robustness() runs it
    full = ddn(model, x, steps=400, **tuned)
    early = ddn(model, x, steps=400, patience=20, **tuned)
    assert early.backwards < full.backwards / 2
    assert float((early.distance / rho).max()) < 1.005


def test_early_exit_fast_forwards_early_stallers_then_stops_them() -> None:
    from salign.attacks._tracker import EarlyExit

    early = EarlyExit(3, torch.device("cpu"), patience=10)
    early.set_schedule(100)
    best = torch.tensor([1.0, 1.0, float("inf")])  # sample 2: nothing found yet
    active = torch.ones(3, dtype=torch.bool)
    for step in range(10):  # first window: everything found counts as progress (from +inf)
        assert early.after_step(step, best, active)[0] is None
    for step in range(10, 19):
        assert early.after_step(step, best, active)[0] is None
    best[1] = 0.5  # sample 1 improves within the second window
    jumped, _ = early.after_step(19, best, active)  # sample 0 stalled at step 20 of 100: skip to the last 10
    assert jumped is not None and jumped.tolist() == [0]
    assert active.tolist() == [True, True, True]
    assert float(early.position(torch.tensor([0]), 20, torch.float32)) == 90.0
    assert float(early.position(torch.tensor([1]), 20, torch.float32)) == 20.0
    for step in range(20, 29):
        early.after_step(step, best, active)
    early.after_step(29, best, active)  # sample 0 stalls again in its tail: stops; sample 1 stalled: skips
    assert active.tolist() == [False, True, True]
    assert early.fast_forwarded.tolist() == [True, True, False]
    for step in range(30, 39):  # sample 1's schedule (offset 60) ends after step 39
        early.after_step(step, best, active)
        assert bool(active[1])
    best[1] = 0.1  # still improving, but its schedule is over
    early.after_step(39, best, active)
    assert active.tolist() == [False, False, True]


def test_early_exit_reports_when_the_active_rows_may_change() -> None:
    """With a schedule, ``active`` only changes at the patience checks and where a schedule
    ends: in between the tracker reuses its rows, and the position is one float until a
    sample skips ahead."""
    from salign.attacks._tracker import EarlyExit

    early = EarlyExit(2, torch.device("cpu"), patience=10)
    early.set_schedule(40)
    best = torch.tensor([1.0, 0.0])  # sample 1 reached distance 0: it stops at the next check
    active = torch.ones(2, dtype=torch.bool)
    for step in range(9):
        assert early.after_step(step, best, active) == (None, False)
        assert early.position(..., step, torch.float32) == float(step)
    assert active.tolist() == [True, True]
    assert early.after_step(9, best, active)[1] is True
    assert active.tolist() == [True, False]
    without = EarlyExit(1, torch.device("cpu"), patience=None)
    without.set_schedule(5)
    flags = [
        without.after_step(step, torch.tensor([1.0]), torch.ones(1, dtype=torch.bool))[1] for step in range(5)
    ]
    assert flags == [False, False, False, False, True]  # only where the schedule ends
    unscheduled = EarlyExit(1, torch.device("cpu"), patience=None)
    unscheduled.set_schedule(None)  # attacks without a schedule change ``active`` themselves
    assert unscheduled.after_step(0, torch.tensor([1.0]), torch.ones(1, dtype=torch.bool))[1] is True


def test_tracker_rows_are_all_while_every_sample_is_active() -> None:
    """All samples active: the rows are ``...`` (every row) and the update keeps the same best points
    as the indexed update of the same step."""
    from salign.attacks._tracker import Tracker

    x = torch.rand(4, 3)
    full = Tracker(x, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool))
    part = Tracker(x, torch.zeros(4, dtype=torch.long), torch.tensor([True, False, True, True]))
    rows_full = next(full.iterations(3, schedule=False))[1]
    rows_part = next(part.iterations(3, schedule=False))[1]
    assert rows_full is ...
    assert isinstance(rows_part, torch.Tensor) and rows_part.tolist() == [0, 2, 3]
    adv, dist = torch.rand(4, 3), torch.tensor([0.5, 0.2, 0.3, 0.1])
    is_adv = torch.tensor([True, True, False, True])
    full.update(..., adv, dist, is_adv, torch.tensor([True, True, True, False]))
    indexed = Tracker(x, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool))
    indexed.update(torch.arange(4), adv, dist, is_adv, torch.tensor([True, True, True, False]))
    torch.testing.assert_close(full.best_dist, indexed.best_dist, rtol=0, atol=0)
    torch.testing.assert_close(full.best_adv, indexed.best_adv, rtol=0, atol=0)
    assert full.nonfinite.tolist() == indexed.nonfinite.tolist() == [False, False, False, True]
    assert full.best_dist.tolist() == torch.tensor([0.5, 0.2, float("inf"), 0.1]).tolist()


class _HostReads:
    """Counts the operations that read a tensor on the host (a device sync on a GPU)."""

    NAMES = ("_local_scalar_dense", "nonzero", "item", "is_nonzero")

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                if func.overloadpacket.__name__ in _HostReads.NAMES:
                    counter.count += 1
                return func(*args, **(kwargs or {}))

        self.count = 0
        self.mode = Mode()


def test_the_normalised_gradient_step_guards_vanished_and_non_finite_gradients() -> None:
    """δ += size · g / ‖g‖ in place; a vanished gradient or one with a NaN/Inf entry steps along
    the sample's fixed random unit direction and is flagged; a regular row is exactly g / ‖g‖;
    an expanded gradient (what autograd returns for some models) is not written to; the step
    never synchronises with the device (no tensor is read on the host)."""
    from salign.attacks._tracker import Tracker, step_along_gradient

    x = torch.rand(4, 5, dtype=torch.float64)
    tracker = Tracker(x, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool))
    g = torch.tensor(
        [
            [3.0, 4.0, 0.0, 0.0, 0.0],
            [float("nan"), 1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [float("inf"), 0.0, 2.0, 0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    before = g.clone()
    delta = torch.zeros(4, 5, dtype=torch.float64)
    random_before = torch.random.get_rng_state()
    host = _HostReads()
    with host.mode:
        out = step_along_gradient(delta, g, 2.0, tracker, ...)
    assert host.count == 0
    assert torch.equal(torch.random.get_rng_state(), random_before)  # its own generator
    assert out is delta
    assert torch.equal(g.nan_to_num(nan=-1.0), before.nan_to_num(nan=-1.0))  # the gradient is untouched
    torch.testing.assert_close(delta.norm(dim=1), torch.full((4,), 2.0, dtype=torch.float64))
    assert delta[0].tolist() == [1.2, 1.6, 0.0, 0.0, 0.0]
    directions = tracker.random_directions(...)
    for row in (1, 2, 3):
        torch.testing.assert_close(delta[row], 2.0 * directions[row], rtol=0, atol=1e-15)
    assert tracker.zero_gradient.tolist() == [False, True, True, True]
    # fixed per sample: the same direction at every step, also through an index
    torch.testing.assert_close(tracker.random_directions(torch.tensor([2])), directions[2:3], rtol=0, atol=0)
    tracker = Tracker(x, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool))
    per_sample = step_along_gradient(
        torch.zeros(2, 5, dtype=torch.float64),
        g[:1].expand(2, 5),
        torch.tensor([1.0, -0.5], dtype=torch.float64),  # a negative size descends
        tracker,
        torch.tensor([0, 1]),
    )
    torch.testing.assert_close(
        per_sample, torch.tensor([[0.6, 0.8, 0, 0, 0], [-0.3, -0.4, 0, 0, 0]], dtype=torch.float64)
    )
    assert tracker.zero_gradient.tolist() == [False, False, False, False]
    expanded = torch.zeros(1, 5, dtype=torch.float64).expand(2, 5)  # a vanished, expanded gradient
    stepped = step_along_gradient(
        torch.zeros(2, 5, dtype=torch.float64), expanded, 1.0, tracker, torch.tensor([1, 3])
    )
    torch.testing.assert_close(stepped, tracker.random_directions(torch.tensor([1, 3])))
    assert tracker.zero_gradient.tolist() == [False, True, False, True]


@pytest.mark.parametrize(
    "make",
    [
        lambda s: salign.attacks.FMN(steps=s),
        lambda s: salign.attacks.FMN(norm="inf", steps=s),
        lambda s: salign.attacks.FMN(norm=1, steps=s),
        lambda s: salign.attacks.DDN(steps=s),
        lambda s: salign.attacks.ALMA(steps=s),
        lambda s: salign.attacks.CarliniWagner(steps=s, binary_search_steps=1),
    ],
    ids=["fmn-l2", "fmn-linf", "fmn-l1", "ddn", "alma", "cw"],
)
def test_attack_loops_never_sync_with_the_device(make: Callable[[int], Any]) -> None:
    """While every sample is active, a step reads nothing on the host: 10 and 30 steps make the
    same number of host reads (a GPU never waits inside the loop)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5)).double()
    x = torch.rand(8, 1, 4, 5, dtype=torch.float64) * 0.02 + 0.49
    counts = []
    for steps in (10, 30):
        reads = _HostReads()
        with reads.mode:
            make(steps)(model, x, warn=False)
        counts.append(reads.count)
    assert counts[0] == counts[1], counts


@pytest.mark.parametrize("fast", [True, False], ids=["cpu-fast-paths", "plain-calls"])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_lp_norm_equals_torch_vector_norm(p: float, fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from salign.attacks import _ops
    from salign.attacks._ops import lp_norm

    monkeypatch.setattr(_ops, "CPU_FAST_PATHS", fast)  # off: the calls other devices make
    t = torch.randn(6, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(lp_norm(t, p), torch.linalg.vector_norm(t.flatten(1), ord=p, dim=1))
    torch.testing.assert_close(
        lp_norm(t, p, start_dim=2), torch.linalg.vector_norm(t.flatten(2), ord=p, dim=2)
    )


@pytest.mark.parametrize("fast", [True, False], ids=["cpu-fast-paths", "plain-calls"])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_project_on_ball_in_place_equals_the_copy(
    p: float, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from salign.attacks import _ops
    from salign.attacks._ops import lp_norm, project_on_ball

    delta = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    radius = torch.tensor([0.1, 1.0, 10.0, 0.5, 2.0], dtype=torch.float64)
    monkeypatch.setattr(_ops, "CPU_FAST_PATHS", not fast)
    other = project_on_ball(delta, radius, p)  # the other path gives the same projection
    monkeypatch.setattr(_ops, "CPU_FAST_PATHS", fast)
    copy = project_on_ball(delta, radius, p)
    torch.testing.assert_close(other, copy, rtol=0, atol=0)
    work = delta.clone()
    got = project_on_ball(work, radius, p, inplace=True)
    torch.testing.assert_close(got, copy, rtol=0, atol=0)
    assert (got is work) == (p != 1.0)  # L1 returns a new tensor
    assert bool((lp_norm(copy, p) <= radius * (1 + 1e-12)).all())


def test_cosine_annealing_agrees_per_sample_and_for_one_float() -> None:
    from salign.attacks._ops import cosine_annealing

    positions = torch.tensor([0.0, 25.0, 99.0], dtype=torch.float64)
    per_sample = cosine_annealing(positions, 100, 1.0, 0.01)
    for k, position in enumerate(positions.tolist()):
        one = cosine_annealing(position, 100, 1.0, 0.01)
        assert isinstance(one, float) and one == pytest.approx(float(per_sample[k]), rel=1e-15)
    assert cosine_annealing(0.0, 100, 1.0, 0.01) == 1.0


def test_alma_multiplier_update_is_the_derivative_of_the_penalty() -> None:
    """ALMA's μ update uses ∂P2/∂y in closed form (no second autograd call per step)."""
    from salign.attacks.alma import penalty_p2, penalty_p2_derivative

    g = torch.Generator().manual_seed(0)
    y = torch.randn(2000, generator=g, dtype=torch.float64) * 3
    rho = torch.rand(2000, generator=g, dtype=torch.float64) * 5
    mu = torch.rand(2000, generator=g, dtype=torch.float64) * 4
    leaf = y.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(penalty_p2(leaf, rho, mu).sum(), leaf)
    torch.testing.assert_close(penalty_p2_derivative(y, rho, mu), autograd, rtol=1e-12, atol=1e-12)


def test_early_exit_does_not_make_a_longer_schedule_worse() -> None:
    """A sample that stalls while the step size is large is annealed, not stopped: with early
    exit, 400 steps must not end worse than 100 steps (the run before this fix stopped such
    samples early, and 1000-step DDN ended behind 100-step DDN on MNIST)."""
    model, x, rho = linear_problem(n=8, seed=7)
    tuned = {"loss": "ce_then_margin", **REFINED}  # as robustness() runs it
    short = ddn(model, x, steps=100, **tuned)
    long = ddn(model, x, steps=400, patience=20, **tuned)
    assert float(long.distance.median()) <= float(short.distance.median()) * (1 + 1e-4)
    assert float((long.distance / rho).max()) < 1.005


def test_warm_start_never_loses_the_start_point() -> None:
    model, x, _ = linear_problem(n=5, seed=6)
    df = deepfool(model, x)
    for fn in (ddn, fmn, alma):
        res = fn(model, x, steps=5, start=df.adv)
        assert bool((res.distance <= df.distance * (1 + 1e-9)).all())


# --- bad inputs and model state -----------------------------------------------------------------


def test_bad_inputs_raise_clear_errors() -> None:
    model, x, _ = linear_problem(n=3)
    with pytest.raises(InputError, match="x must be in"):
        ddn(model, x + 1.0, steps=2)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        robustness(model, bad, steps=2, quiet=True)
    with pytest.raises(InputError, match="labels must be in"):
        fmn(model, x, torch.tensor([0, 1, 7]), steps=2)
    with pytest.raises(InputError, match="labels must have shape"):
        fmn(model, x, torch.tensor([0, 1]), steps=2)
    with pytest.raises(InputTypeError):
        alma(model, x.numpy(), steps=2)  # type: ignore[arg-type]
    with pytest.raises(ModelOutputError, match="shape"):
        ddn(WrongShape(), x, steps=2)
    with pytest.raises(InputError, match="unknown attack"):
        robustness(model, x, attacks=("ddn", "pgd"))
    with pytest.raises(InputError, match="budget"):
        robustness(model, x, budget="huge")
    with pytest.raises(InputError, match="steps"):
        ddn(model, x, steps=0)
    with pytest.raises(InputError, match="start"):
        ddn(model, x, steps=2, start=x[:2])


def test_model_mode_and_requires_grad_flags_are_restored() -> None:
    model = salign.models.build("relu_mlp", input_shape=(1, 6, 6), hidden=(16,), num_classes=4)
    model.train()
    model.net[0].eval()
    model.net[1].weight.requires_grad_(False)
    before_modes = [m.training for m in model.modules()]
    before_flags = [p.requires_grad for p in model.parameters()]
    x = torch.rand(3, 1, 6, 6)
    _quiet(robustness, model, x, steps=5, quiet=True)
    _quiet(carlini_wagner, model, x, steps=5, binary_search_steps=2)
    assert [m.training for m in model.modules()] == before_modes
    assert [p.requires_grad for p in model.parameters()] == before_flags
    assert all(p.grad is None for p in model.parameters())


# --- cross-check against foolbox 3.3.4 ----------------------------------------------------------


def _tiny_trained_mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x, y = salign.data.synthetic_gaussians(200, num_classes=3, shape=(1, 6, 6), seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x[:12]


def test_ddn_and_fmn_match_or_beat_foolbox() -> None:
    fb = pytest.importorskip("foolbox")
    model, x = _tiny_trained_mlp()
    labels = model(x).argmax(1)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    for ours_fn, theirs in ((ddn, fb.attacks.DDNAttack(steps=100)), (fmn, fb.attacks.L2FMNAttack(steps=100))):
        ours = ours_fn(model, x, labels, steps=100)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, clipped, is_adv = theirs(fmodel, x, labels, epsilons=None)
        d_fb = torch.where(is_adv, (clipped - x).flatten(1).norm(dim=1), torch.full((len(x),), float("inf")))
        assert bool(ours.success.all())
        assert float(ours.distance.median()) <= 1.05 * float(d_fb.median())
        assert bool((ours.distance <= d_fb * 1.05).float().mean() >= 0.9)


@pytest.mark.parametrize("norm", [2.0, 1.0], ids=["L2", "L1"])
def test_alma_matches_the_authors_adv_lib(norm: float) -> None:
    """Our ALMA and its authors' (adv-lib 0.2.8, ``make peers``) run the same algorithm with the
    same defaults: at 100 steps on a small trained MLP the L2 runs agree sample by sample; in L1
    the trajectories part (adv-lib differentiates ‖(x + δ) − x‖₁, whose sign vanishes where δ is
    below x's rounding; ours ‖δ‖₁), so only the medians are compared."""
    adv_lib = pytest.importorskip("adv_lib.attacks")
    from salign.attacks import ALMA

    model, x = _tiny_trained_mlp()
    labels = model(x).argmax(1)
    ours = ALMA(norm=norm, steps=100)(model, x, labels)
    theirs = adv_lib.alma(model, x, labels, num_steps=100, distance=f"l{norm:g}")
    assert bool(ours.success.all()) and bool((model(theirs).argmax(1) != labels).all())
    ratio = ours.distance.double() / (theirs - x).flatten(1).norm(p=norm, dim=1).double()
    if norm == 2:
        assert int(((ratio - 1).abs() < 1e-3).sum()) >= 10, ratio
    assert abs(float(ratio.median()) - 1) < 0.01, ratio


def test_thorough_budget_adds_cold_started_copies() -> None:
    model, x, rho = linear_problem(n=3, seed=7)
    # 20 cold steps of DDN and C&W, unpolished, end farther than DeepFool: flagged and warned
    with pytest.warns(RuntimeWarning, match="farther from x than DeepFool"):
        res = robustness(
            model,
            x,
            budget="thorough",
            steps=20,
            attacks=("deepfool", "ddn", "fmn", "carlini_wagner"),
            polish_steps=0,
            quiet=True,
        )
    assert res.flags["worse_than_deepfool"] == 3
    assert set(res.per_attack) == {"deepfool", "ddn", "fmn", "carlini_wagner", "fmn_cold", "ddn_margin"}
    assert float((res.distance / rho - 1).abs().max()) < 1e-3
    assert res.per_attack["fmn_cold"].backwards >= 3 * 20  # cold copies do not start from the best point


def test_budgets_add_their_extra_runs_only_for_requested_attacks() -> None:
    model, x, rho = linear_problem(n=3, seed=9)
    plans = {  # (budget, attacks, steps): per-attack labels; restart chains need >= 100 steps
        ("standard", ("deepfool", "ddn", "fmn"), 100): {"deepfool", "ddn", "fmn", "ddn_short", "fmn_short"},
        ("standard", ("deepfool", "ddn", "fmn"), 30): {"deepfool", "ddn", "fmn"},
        ("fast", ("deepfool", "ddn", "fmn"), 100): {"deepfool", "ddn", "fmn"},
        ("standard", ("deepfool", "alma"), 100): {"deepfool", "alma", "alma_short"},
        ("thorough", ("ddn",), 30): {"ddn", "ddn_margin"},
        ("thorough", ("fmn",), 100): {"fmn", "fmn_cold", "fmn_short"},
    }
    for (budget, attacks, steps), expected in plans.items():
        res = robustness(model, x, budget=budget, steps=steps, attacks=attacks, quiet=True)
        assert set(res.per_attack) == expected, (budget, attacks)
        assert float((res.distance / rho - 1).abs().max()) < 1e-3


def _recorded_starts(monkeypatch: pytest.MonkeyPatch, attack: type) -> list[torch.Tensor | None]:
    """The start points ``attack``'s runs get, in call order (its ``iterate`` wrapped)."""
    starts: list[torch.Tensor | None] = []
    iterate = attack.iterate

    def spy(self: object, model: nn.Module, tracker: object, start: torch.Tensor | None) -> None:
        starts.append(start)
        iterate(self, model, tracker, start)

    monkeypatch.setattr(attack, "iterate", spy)
    return starts


def test_a_restart_chain_warm_starts_from_its_own_best_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """The short chain's FMN starts from the best of DeepFool and the short DDN, not from the
    main chain's (better) best point: the chain is an independent restart."""
    from salign.attacks import FMN

    model, x, _ = linear_problem(n=4, seed=11, dtype=torch.float64)
    starts = _recorded_starts(monkeypatch, FMN)
    res = robustness(model, x, attacks=("deepfool", "ddn", "fmn"), steps=100, polish_steps=0, quiet=True)
    assert len(starts) == 2 and starts[0] is not None and starts[1] is not None
    df, ddn_short = res.per_attack["deepfool"], res.per_attack["ddn_short"]
    chain_best = torch.where((ddn_short.distance < df.distance).view(-1, 1, 1, 1), ddn_short.adv, df.adv)
    torch.testing.assert_close(starts[1], chain_best, rtol=0, atol=0)
    main = res.per_attack["ddn"]
    main_best = torch.where((main.distance < df.distance).view(-1, 1, 1, 1), main.adv, df.adv)
    torch.testing.assert_close(starts[0], main_best, rtol=0, atol=0)


def test_l2_alma_runs_long_from_x_and_short_from_the_best_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """In L2 (ensemble.ALMA_FROM_X) the long ALMA starts from x and polishes its own point, and the
    restart chain's short ALMA starts from the best point over every run so far, not from the
    chain's; the fast budget (no chain) and L1 keep the long ALMA warm-started."""
    from salign.attacks import ALMA, DEFAULT_ATTACKS, default_plan

    def alma_runs(budget: str, norm: float) -> list[tuple[str, str, str]]:
        plan = default_plan(DEFAULT_ATTACKS[norm], budget, 1000, "auto", norm)
        return [(r.label, r.start, r.polish) for r in plan if r.label.startswith("alma")]

    assert alma_runs("standard", 2.0) == [("alma", "x", "own"), ("alma_short", "best", "best")]
    assert alma_runs("thorough", 2.0) == [("alma", "x", "own"), ("alma_short", "best", "best")]
    assert alma_runs("fast", 2.0) == [("alma", "best", "none")]
    assert alma_runs("standard", 1.0)[:2] == [("alma", "best", "none"), ("alma_short", "chain", "none")]

    model, x, _ = linear_problem(n=4, seed=11, dtype=torch.float64)
    starts = _recorded_starts(monkeypatch, ALMA)
    res = robustness(model, x, attacks=("deepfool", "ddn", "alma"), steps=100, polish_steps=0, quiet=True)
    assert len(starts) == 2 and starts[0] is None and starts[1] is not None
    runs = [res.per_attack[k] for k in ("deepfool", "ddn", "alma", "ddn_short")]
    best = torch.stack([r.distance for r in runs]).argmin(0)
    expected = torch.stack([runs[int(b)].adv[i] for i, b in enumerate(best)])
    torch.testing.assert_close(starts[1], expected, rtol=0, atol=0)


def test_cold_attacks_in_the_ensemble_are_polished() -> None:
    model, x, rho = linear_problem(n=4, seed=8)
    res = robustness(model, x, steps=100, attacks=("ddn", "carlini_wagner"), quiet=True)
    for name in ("ddn", "carlini_wagner"):  # each polished onto the linear boundary's nearest point
        assert float((res.per_attack[name].distance / rho - 1).abs().max()) < 1e-3


def test_fmn_reaches_a_boundary_behind_the_box() -> None:
    # class 1 needs +0.3 on the last pixel, but the gradient points mostly out of the box (below
    # 0 on the other pixels), so most of each step is clamped away
    model = nn.Linear(10, 2).double()
    w = torch.tensor([-1.0] * 9 + [0.1], dtype=torch.float64)
    model.weight.data = torch.stack([torch.zeros(10, dtype=torch.float64), w])
    model.bias.data = torch.tensor([0.08, 0.0], dtype=torch.float64)
    x = torch.tensor([[0.0] * 9 + [0.5]], dtype=torch.float64)
    res = fmn(model, x, steps=300, **REFINED)  # the guarded ε search is the default
    assert bool(res.success.all())
    assert float(res.distance[0]) == pytest.approx(0.3, rel=1e-3)
    # the paper's ε search stalls here: the clamp holds ‖δ‖ below ε (why guarded_search exists)
    assert not bool(_quiet(fmn, model, x, steps=300, guarded_search=False).success.any())


class _HalfPlane(nn.Module):
    """Two logits (0, ⟨w, x⟩ − c): class 1 beyond the hyperplane ⟨w, x⟩ = c."""

    def __init__(self, w: torch.Tensor, c: float) -> None:
        super().__init__()
        self.w, self.c = w, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1).double() @ self.w - self.c
        return torch.stack([torch.zeros_like(z), z], 1)


def test_verify_pushes_a_point_left_just_short_of_the_boundary_instead_of_dropping_it() -> None:
    """A found point that fails the final forward (e.g. a float32 forward of another batch shape
    puts it back on the clean side) is pushed out a little, not reported as 'nothing found'."""
    from salign.attacks._refine import verify

    torch.manual_seed(0)
    w = torch.randn(8, dtype=torch.float64)
    x = torch.full((3, 8), 0.5, dtype=torch.float64)
    c = float(w.sum() * 0.5) + 0.1  # x is on the clean side, at distance 0.1/‖w‖
    model = _HalfPlane(w, c)
    rho = 0.1 / float(w.norm())
    direction = w / w.norm()
    adv = x.clone()
    adv[0] += (rho * (1 - 1e-9)) * direction  # just short of the boundary: not adversarial
    adv[1] += (rho * (1 + 1e-3)) * direction  # adversarial as given
    # adv[2] == x: nothing was found for this sample
    labels = torch.zeros(3, dtype=torch.long)
    out = verify(model, x, adv, labels, labels)
    assert out["success"].tolist() == [True, True, False]
    assert rho < float(out["distance"][0]) <= rho * 1.01
    assert float(out["distance"][1]) == pytest.approx(rho * (1 + 1e-3), rel=1e-9)
    assert out["adv_class"].tolist() == [1, 1, 0]
    assert float(out["distance"][2]) == float("inf")
    assert torch.equal(out["adv"][2], x[2])


def test_ddn_margin_tail_removes_the_cross_entropy_bias() -> None:
    """Near the boundary between classes 0 and 1, a third class that never wins still holds
    softmax mass, so the cross-entropy gradient is not the boundary's normal and DDN settles on a
    point farther than the nearest one; the margin tail (robustness' DDN) settles on the normal."""
    model = nn.Linear(2, 3).double()
    model.weight.data = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    model.bias.data = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)  # Ψ1 = Ψ0 at x1 = 0.75
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    rho = 0.25  # class 2 needs x2 = 1: farther, and not inside the box
    kw = {"steps": 300, "line_search_steps": 20}
    biased = ddn(model, x, loss="ce", **kw)
    default = ddn(model, x, loss="ce_then_margin", **kw)
    assert int(default.adv_class) == 1
    assert float(default.distance) == pytest.approx(rho, rel=1e-3)
    assert float(biased.distance) > rho * 1.003
