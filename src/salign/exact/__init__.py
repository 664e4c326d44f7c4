"""The exact minimal adversarial distance ρ_p(x) of a small ReLU network, by mixed-integer
programming: an oracle that tells how far the attacks' upper bounds are from the true minimum.

:func:`exact_robustness` solves, per sample and per rival class, the MIP of Tjeng, Xiao &
Tedrake (2019) with HiGHS (L∞, L1: MILP) or SCIP (L2: a convex quadratic objective, MIQCP) and
returns an :class:`ExactResult` with the solver's primal point (verified by re-forwarding),
its dual bound and the gap between them. Needs the ``exact`` extra:
``pip install 'saliency-alignment[exact]'``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from salign._norms import parse_norm
from salign._progress import progress_bar
from salign._validation import check_inputs, check_labels, check_model, eval_mode
from salign.errors import InputError, InputTypeError
from salign.exact._milp import (
    INSTALL_HINT,
    Outcome,
    Problem,
    build,
    import_solver,
    solve_highs,
    solve_scip,
    solver_available,
)
from salign.exact._network import AffineNet, extract, interval_bounds

#: Statuses of :attr:`ExactResult.status`.
STATUSES = ("optimal", "time_limit", "unverified", "tolerance", "infeasible", "misclassified")

#: Each solve is asked for this fraction of the requested gap: the verified point lies a little
#: farther than the solver's (its constraints hold up to a tolerance, and it may be pushed).
SOLVER_GAP_FRACTION = 0.5

#: When the verified point still ends more than the requested gap above the dual bound (the push
#: past the verification margin took more than the other half of the gap), the rivals whose
#: bound is that far below are solved again, with this fraction of the requested gap. The
#: margin of :data:`MARGIN_ULPS` costs ``16 ε₃₂ (1 + max|Ψ|) / ‖∇(Ψ_j − Ψ_y)‖`` in distance,
#: which is 6.1e-5 of ρ on sample 11 of docs/benchmarks/exact.md's penalised MLP (ρ = 0.0118):
#: with the solver's incumbent 5e-5 above its bound, that sample ended at 1.18e-4.
REFINE_GAP_FRACTION = 0.05

#: Outward pushes (relative to ‖δ‖) tried, in order, when the solver's point lies on the decision
#: boundary and does not verify as adversarial: 0, then 1e-9 to 1e-3 in steps of 10^(1/16)
#: (one batched forward of 98 points), so that the verified point lies at most 1.16 times the
#: needed push beyond the solver's. With steps of 10, a sample whose margin of
#: :data:`MARGIN_ULPS` needed a push of 1.1e-4 verified at 1e-3, ten times the requested gap (22
#: of 50 L1 samples of docs/benchmarks/exact.md's plain MLP were then not proven optimal).
PUSHES = (0.0, *(10 ** (-9 + k / 16) for k in range(97)))


@dataclass(frozen=True)
class ExactResult:
    """Per-sample outcome of :func:`exact_robustness`.

    Attributes:
        distance: ``‖adv − x‖_p`` of the verified point (an upper bound on ρ_p, at most ``gap``
            above it when ``status`` is ``optimal``); ``+inf`` where no adversarial point exists
            in the box or none was found in time; ``0`` for misclassified samples.
        lower_bound: the solver's dual bound on ρ_p (min over the rival classes), ≤ distance.
        gap: ``(distance − lower_bound) / distance`` (0 where both are 0 or infinite).
        status: per sample, one of ``optimal`` (gap ≤ the requested gap), ``time_limit`` (a
            solve stopped at its time limit with a larger gap), ``unverified`` (the solver's
            points failed verification, so the gap stayed open), ``tolerance`` (every solve
            finished, the refined ones too, but the verified point is farther than the gap
            above the dual bound: the verification margin, see below, exceeds the gap), ``infeasible`` (no other class
            is reachable in [0, 1]^d: ρ = ∞) and ``misclassified`` (with ``labels``: ρ = 0).
        adv: the verified adversarial points, the inputs' shape and dtype (``x`` where none).
        success: a verified adversarial point was found.
        adv_class: the class predicted at ``adv`` (the label where none).
        labels: the class each sample was moved away from.
        seconds: wall-clock seconds per sample.
        nodes: branch-and-bound nodes per sample, over all rivals.
        norm: p (1, 2 or ``inf``).
        solver: ``highs`` or ``scip``.
    """

    adv: Tensor
    distance: Tensor
    lower_bound: Tensor
    gap: Tensor
    status: tuple[str, ...]
    success: Tensor
    adv_class: Tensor
    labels: Tensor
    seconds: Tensor
    nodes: Tensor
    norm: float
    solver: str

    def __len__(self) -> int:
        return len(self.distance)

    def median(self) -> float:
        """Median distance over all samples (``inf`` counts as larger than everything)."""
        return float(self.distance.double().median())

    def to_dict(self) -> dict[str, Any]:
        """Per-sample columns as lists (distance, lower_bound, gap, status, success, adv_class,
        label, seconds, nodes), ready for ``pandas.DataFrame``."""
        return {
            "distance": self.distance.detach().cpu().double().tolist(),
            "lower_bound": self.lower_bound.detach().cpu().double().tolist(),
            "gap": self.gap.detach().cpu().double().tolist(),
            "status": list(self.status),
            "success": self.success.detach().cpu().tolist(),
            "adv_class": self.adv_class.detach().cpu().tolist(),
            "label": self.labels.detach().cpu().tolist(),
            "seconds": self.seconds.detach().cpu().double().tolist(),
            "nodes": self.nodes.detach().cpu().tolist(),
        }

    def to_frame(self) -> Any:
        """The per-sample columns of :meth:`to_dict` as a ``pandas.DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.to_dict())


def exact_robustness(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None = None,
    *,
    norm: float | str = 2,
    time_limit: float = 60.0,
    gap: float = 1e-4,
    solver: Literal["auto", "highs", "scip"] = "auto",
    start: Literal["deepfool"] | Tensor | None = "deepfool",
    quiet: bool | None = None,
) -> ExactResult:
    """Exact robustness ρ_p(x) of a small ReLU network by mixed-integer programming.

    ``ρ_p(x) = min ‖δ‖_p  s.t.  argmax Ψ(x + δ) ≠ y,  x + δ ∈ [0, 1]^d`` (Etmann et al. 2019,
    D5_p) is a mixed-integer program for a piecewise-linear Ψ (Tjeng, Xiao & Tedrake, ICLR 2019,
    "Evaluating robustness of neural networks with mixed integer programming"): every ReLU
    a = max(ẑ, 0) whose pre-activation bounds l < 0 < u straddle 0 becomes a binary z with
    ``a ≥ ẑ, a ≥ 0, a ≤ u·z, a ≤ ẑ − l·(1 − z)`` (big-M), units with u ≤ 0 are dropped and
    units with l ≥ 0 are linear. Bounds come from interval arithmetic over the box
    ``[0, 1]^d ∩ {‖δ‖_∞ ≤ r}``, r the best distance so far (valid in every norm since
    ‖δ‖_∞ ≤ ‖δ‖_p), the first layer's also cut to the Lp ball (``|⟨w, δ⟩| ≤ r‖w‖_q``), so a
    good starting point makes most units stable. The objective is
    linear for L∞ (min t, −t ≤ δ_i ≤ t) and L1 (min Σ t_i); for L2 it is a second-order cone
    (min t, ‖δ‖₂ ≤ t, a mixed-integer convex quadratic program; HiGHS solves MILPs and convex
    QPs but not MIQPs, so L2 uses SCIP).

    **One MIP per rival class.** The misclassification ``max_{j≠y} Ψ_j ≥ Ψ_y`` is a
    disjunction; instead of one binary per rival with a big-M on the logit differences, each
    rival j gets its own MIP with the single row Ψ_j ≥ Ψ_y (a tighter relaxation, no big-M on
    the output), solved in the order of the linearised distance at x, each with the best
    distance so far as a cutoff (objective ≤ r) and as the radius of the bounds' box; a rival
    whose interval bound shows Ψ_j < Ψ_y on the whole box is skipped. ρ is the minimum over
    the rivals, and the lower bound the minimum of their dual bounds (the cutoff for a rival
    proven infeasible under it).

    **Verification.** The solver's point satisfies Ψ_j ≥ Ψ_y up to its feasibility tolerance and
    typically sits on the boundary (a tie). It is clipped to [0, 1]^d, cast to ``x``'s dtype and
    re-forwarded through the model in float64 and in its own dtype; if either forward does not
    prefer another class by more than :data:`MARGIN_ULPS` ulps (a margin that no other batch
    size's rounding flips), δ is pushed outward by 1e-9 to 1e-3 relative in steps of 10^(1/16)
    (:data:`PUSHES`) and re-checked; ``distance`` is the norm of the first point that verifies.
    Points that never verify are discarded (status ``unverified`` if that leaves the gap open).
    Each rival is solved to half the requested gap (:data:`SOLVER_GAP_FRACTION`), the other half
    being left to the push; a rival whose bound still ends more than the gap below the verified
    distance is solved again at a twentieth of it (:data:`REFINE_GAP_FRACTION`).
    The dual bound is the solver's, in floating point with its tolerances: a certificate up
    to about 1e-9 absolute, not a verified proof.

    How far heuristic attacks are from the exact minimum: Marro & Lombardi (2023, "Computational
    asymmetries in robust classification", the UG100 benchmark) measure it in L∞ for MNIST
    and CIFAR-10 networks; docs/benchmarks/exact.md does it for ``salign.robustness``.

    Args:
        model: a nested ``nn.Sequential`` of ``nn.Flatten``, ``nn.Linear``, ``nn.ReLU``, salign's
            ``Normalize``, ``nn.Conv1d``/``nn.Conv2d``, ``nn.AvgPool1d``/``nn.AvgPool2d``,
            ``nn.BatchNorm1d``/``nn.BatchNorm2d`` (with running statistics), ``nn.Identity`` and
            ``nn.Dropout`` (run in eval mode; the affine layers between two ReLUs are composed
            into one dense matrix, so the MIP has one binary per ReLU); a module with
            an ``as_sequential()`` method is read through the ``nn.Sequential`` it returns
            (salign's ``linear`` and ``relu_mlp`` models have one; the forwards must agree on
            ``x``); anything else is an :class:`~salign.errors.InputError` naming the layer.
            Its mode is restored.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        labels: classes (N,) to move away from; ``None`` (the paper's ρ) uses the predicted
            class. Misclassified samples get distance 0.
        norm: 2 (default), ``"inf"`` or 1.
        time_limit: seconds per sample over all its rivals; every rival gets at least
            ``time_limit / 20`` so that each one has a dual bound.
        gap: relative optimality gap on ρ at which a solve stops.
        solver: ``"highs"`` (L∞, L1), ``"scip"`` (every norm) or ``"auto"`` (HiGHS for L∞ and
            L1 when installed, else SCIP; SCIP for L2).
        start: ``"deepfool"`` (default: salign's DeepFool in the norm, a cheap first radius),
            adversarial points (N, ...) to start from (each is verified first and ignored if it
            is not adversarial), or ``None`` (start from the full box).
        quiet: hide the progress bar.

    Returns:
        An :class:`ExactResult` on ``x``'s device.

    Raises:
        MissingDependencyError: the solver is not installed (``pip install 'saliency-alignment[exact]'``).
        InputError: an unsupported layer, an unknown norm or solver, a bad ``time_limit``/``gap``.
    """
    x = check_inputs(x)
    model = check_model(model, x)
    p = parse_norm(norm)
    if not isinstance(time_limit, (int, float)) or isinstance(time_limit, bool) or not time_limit > 0:
        raise InputError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if not isinstance(gap, (int, float)) or isinstance(gap, bool) or not 0 <= gap < 1:
        raise InputError(f"gap must be a relative gap in [0, 1), got {gap!r}")
    name = _choose_solver(solver, p)
    solve = solve_highs if name == "highs" else solve_scip
    sample_shape = tuple(x.shape[1:])
    net = extract(model, sample_shape)
    n = len(x)
    with eval_mode(model), torch.no_grad():
        predicted = model(x.detach()).argmax(1).cpu()
    y = predicted if labels is None else check_labels(labels, n, net.num_classes).cpu()
    starts = _starts(model, x, y.to(x.device), p, start)  # DeepFool needs autograd
    with eval_mode(model), torch.no_grad():
        model64 = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
        x64 = x.detach().to("cpu", torch.float64).flatten(1).numpy()
        logits_native = model(x.detach())
        logits64 = model64(torch.from_numpy(x64).view(n, *sample_shape))
        ref = net.forward(x64)
        scale = 1.0 + float(np.abs(ref).max())
        if not np.allclose(ref, logits64.numpy(), rtol=0, atol=1e-9 * scale):
            raise InputError(
                "exact_robustness: the model's forward does not match its layers read as "
                "Flatten/Linear/ReLU/Normalize (a custom forward or hooks?)"
            )
        if logits_native.ndim != 2 or logits_native.shape[1] != net.num_classes:
            raise InputError(
                f"exact_robustness: expected logits (N, {net.num_classes}), got {tuple(logits_native.shape)}"
            )
        checker = _Checker(model, model64, x, p)
        rows = []
        with progress_bar(desc=f"exact L{_pname(p)}", total=n, quiet=quiet) as bar:
            for i in range(n):
                rows.append(
                    _solve_sample(
                        net,
                        checker,
                        i,
                        x64[i],
                        int(y[i]),
                        bool(predicted[i] != y[i]),
                        p,
                        None if starts is None else starts[i],
                        solve,
                        float(time_limit),
                        float(gap),
                    )
                )
                bar.update(1)
    dev = x.device
    adv = torch.stack([r.adv for r in rows]).to(dev)
    return ExactResult(
        adv=adv,
        distance=torch.tensor([r.distance for r in rows], dtype=torch.float64, device=dev),
        lower_bound=torch.tensor([r.lower for r in rows], dtype=torch.float64, device=dev),
        gap=torch.tensor([r.gap for r in rows], dtype=torch.float64, device=dev),
        status=tuple(r.status for r in rows),
        success=torch.tensor([r.success for r in rows], device=dev),
        adv_class=torch.tensor([r.adv_class for r in rows], device=dev),
        labels=y.to(dev),
        seconds=torch.tensor([r.seconds for r in rows], dtype=torch.float64, device=dev),
        nodes=torch.tensor([r.nodes for r in rows], device=dev),
        norm=p,
        solver=name,
    )


def _pname(p: float) -> str:
    return "∞" if math.isinf(p) else str(int(p))


def _choose_solver(solver: object, p: float) -> str:
    if solver not in ("auto", "highs", "scip"):
        raise InputError(f"solver must be 'auto', 'highs' or 'scip', got {solver!r}")
    if solver == "auto":
        solver = "highs" if p != 2 and solver_available("highs") else "scip"
    if solver == "highs" and p == 2:
        raise InputError(
            "solver='highs' cannot solve the L2 problem (HiGHS has no mixed-integer QP); use "
            "solver='scip' or 'auto'"
        )
    import_solver(str(solver))  # MissingDependencyError naming the extra
    return str(solver)


def _starts(model: nn.Module, x: Tensor, y: Tensor, p: float, start: object) -> Tensor | None:
    if start is None:
        return None
    if isinstance(start, str):
        if start != "deepfool":
            raise InputError(f"start must be 'deepfool', a tensor of points or None, got {start!r}")
        from salign.attacks import deepfool

        return deepfool(model, x, y, norm=p, warn=False).adv.detach()
    if not isinstance(start, Tensor):
        raise InputTypeError(
            f"start must be 'deepfool', a tensor of points or None, got {type(start).__name__}"
        )
    if start.shape != x.shape:
        raise InputError(f"start must have the shape of x {tuple(x.shape)}, got {tuple(start.shape)}")
    return start.detach()


class _Checker:
    """Verifies candidate points: clipped, cast to x's dtype, strictly misclassified by a float64
    forward and by the model's own forward."""

    def __init__(self, model: nn.Module, model64: nn.Module, x: Tensor, p: float) -> None:
        self.model, self.model64, self.x, self.p = model, model64, x, p
        self.shape = tuple(x.shape[1:])

    def first_adversarial(
        self, i: int, x64: np.ndarray, y: int, cand: np.ndarray, pushes: Sequence[float] = PUSHES
    ) -> tuple[Tensor, float, int] | None:
        """The first outward push of ``cand`` that verifies: (point, distance, class), or None."""
        delta = np.clip(cand, 0.0, 1.0) - x64
        pts = np.stack([np.clip(x64 + (1.0 + s) * delta, 0.0, 1.0) for s in pushes])
        native = torch.from_numpy(pts).to(self.x.dtype)
        as64 = native.to(torch.float64)
        ok64, cls = _strictly_other(self.model64(as64.view(-1, *self.shape)), y)
        okn, _ = _strictly_other(self.model(native.to(self.x.device).view(-1, *self.shape)).cpu(), y)
        ok = ok64 & okn
        if not bool(ok.any()):
            return None
        k = int(ok.nonzero()[0, 0])
        dist = float(np.linalg.norm(as64[k].numpy() - x64, ord=self.p))
        return native[k].view(self.shape), dist, int(cls[k])


#: How far (in ulps of the largest logit) another class must score above ``y`` for a point to
#: verify: a forward of a batch of another size can round the logits differently (another
#: matrix-multiply kernel), and an optimal point sits on the boundary, so a margin of a few ulps
#: could flip in the user's own forward. On the 7×7 MLPs of docs/benchmarks/exact.md the logits
#: of 64 test images moved by at most 2.4 such ulps between batches of 1 and of 2–512; 64 ulps
#: needed pushes of up to 1e-4 relative, as much as the requested gap, while 16 keep a margin of
#: 7 over that. The outward pushes clear it at a negligible distance.
MARGIN_ULPS = 16


def _strictly_other(logits: Tensor, y: int) -> tuple[Tensor, Tensor]:
    """(another class scores above ``y`` by more than :data:`MARGIN_ULPS` ulps, that class)."""
    others = logits.clone()
    others[:, y] = -math.inf
    best, cls = others.max(1)
    scale = 1 + logits.abs().nan_to_num(0, 0, 0).amax(1)
    return best - logits[:, y] > MARGIN_ULPS * torch.finfo(logits.dtype).eps * scale, cls


@dataclass
class _Row:
    adv: Tensor
    distance: float
    lower: float
    gap: float
    status: str
    success: bool
    adv_class: int
    seconds: float
    nodes: int


def _box(x64: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    if math.isinf(radius):
        return np.zeros_like(x64), np.ones_like(x64)
    return np.maximum(x64 - radius, 0.0), np.minimum(x64 + radius, 1.0)


def _rival_order(net: AffineNet, x64: np.ndarray, y: int, p: float) -> list[tuple[float, int]]:
    """(linearised distance, rival) at x, (Ψ_y − Ψ_j) / ‖∇(Ψ_y − Ψ_j)‖_q, nearest first."""
    jac = np.eye(net.in_dim)
    h = x64
    for k, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        h = h @ w.T + b
        jac = w @ jac
        if k < len(net.weights) - 1:
            jac = jac * (h > 0)[:, None]
            h = np.maximum(h, 0.0)
    q = 1.0 if math.isinf(p) else (math.inf if p == 1 else 2.0)
    key = []
    for j in range(net.num_classes):
        if j == y:
            continue
        g = np.linalg.norm(jac[y] - jac[j], ord=q)
        key.append(((h[y] - h[j]) / g if g > 0 else math.inf, j))
    return sorted(key)


def _solve_sample(
    net: AffineNet,
    checker: _Checker,
    i: int,
    x64: np.ndarray,
    y: int,
    misclassified: bool,
    p: float,
    start: Tensor | None,
    solve: Callable[[Problem, float, float], Outcome],
    time_limit: float,
    gap: float,
) -> _Row:
    t0 = time.perf_counter()
    x_native = checker.x[i].detach().cpu()
    if misclassified:
        return _Row(x_native, 0.0, 0.0, 0.0, "misclassified", True, y, time.perf_counter() - t0, 0)
    best, best_pt, best_cls = math.inf, x_native, y
    if start is not None:
        found = checker.first_adversarial(
            i, x64, y, start.detach().to("cpu", torch.float64).flatten().numpy()
        )
        if found is not None:
            best_pt, best, best_cls = found
    deadline = t0 + time_limit
    floor = time_limit / 20
    timed_out = rejected = False
    nodes = 0
    bounds_for: tuple[float, list[tuple[np.ndarray, np.ndarray]]] | None = None
    w_last, b_last = net.weights[-1], net.biases[-1]
    rivals = _rival_order(net, x64, y, p)
    lowers: dict[int, float] = {}

    def attempt(lin: float, j: int, solver_gap: float, limit: float) -> None:
        """Solve rival j's MIP under the best distance so far; record its bound and point."""
        nonlocal bounds_for, nodes, timed_out, rejected, best, best_pt, best_cls
        radius = best
        lo, hi = _box(x64, radius)
        if bounds_for is None or bounds_for[0] != radius:
            bounds_for = (radius, interval_bounds(net, lo, hi, x64, radius, p))
        bounds = bounds_for[1]
        diff = w_last[j] - w_last[y]
        h_lo, h_hi = bounds[-1]
        if np.maximum(diff, 0) @ h_hi + np.minimum(diff, 0) @ h_lo + b_last[j] - b_last[y] < 0:
            lowers[j] = radius  # Ψ_j < Ψ_y on the whole box: nothing below the radius
            return
        prob = build(net, bounds, x64, lo, hi, y, j, p, radius, lin if 1e-6 < lin < math.inf else 1.0)
        out: Outcome = solve(prob, limit, solver_gap)
        nodes += out.nodes
        if out.status == "infeasible":
            lowers[j] = radius
            return
        timed_out |= out.status != "optimal"
        lowers[j] = max(out.dual_bound, 0.0)
        if out.x is not None and out.objective < best:
            found = checker.first_adversarial(i, x64, y, out.x)
            if found is None:
                rejected = True
            elif found[1] < best:
                best_pt, best, best_cls = found

    for lin, j in rivals:
        attempt(lin, j, gap * SOLVER_GAP_FRACTION, max(deadline - time.perf_counter(), floor))
    # The push past the verification margin can take more than the half of the gap left to it:
    # solve the rivals whose bound is still too far below again, closer (REFINE_GAP_FRACTION).
    if not timed_out and not math.isinf(best) and best > 0:
        for lin, j in rivals:
            left = deadline - time.perf_counter()
            if lowers[j] < best * (1 - gap) and left > 0:
                attempt(lin, j, gap * REFINE_GAP_FRACTION, left)
    lower = min([*lowers.values(), best])
    if math.isinf(best):
        status = (
            "infeasible"
            if math.isinf(lower)
            else ("unverified" if rejected and not timed_out else "time_limit")
        )
        g = 0.0 if math.isinf(lower) else 1.0
    else:
        g = max(best - lower, 0.0) / best if best > 0 else 0.0
        if g <= gap * (1 + 1e-9) + 1e-12:
            status = "optimal"
        else:
            status = "time_limit" if timed_out else ("unverified" if rejected else "tolerance")
    return _Row(
        best_pt, best, lower, g, status, not math.isinf(best), best_cls, time.perf_counter() - t0, nodes
    )


__all__ = ["INSTALL_HINT", "STATUSES", "ExactResult", "exact_robustness"]
