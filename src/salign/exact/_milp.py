"""The mixed-integer program of one (sample, rival class) pair and its two backends (HiGHS, SCIP).

Columns: the adversarial input x' (its box intersected with the L∞ ball of the cutoff radius),
one continuous column per live hidden neuron, one binary per unstable neuron (big-M encoding
of Tjeng, Xiao & Tedrake 2019 with interval bounds), and the norm's epigraph columns. One row
asks that the rival's logit reaches the label's: Ψ_j(x') − Ψ_y(x') ≥ 0.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from salign.errors import MissingDependencyError
from salign.exact._network import AffineNet

INSTALL_HINT = "pip install 'saliency-alignment[exact]'"
#: The python package of each solver.
SOLVER_MODULES = {"highs": "highspy", "scip": "pyscipopt"}
#: Feasibility tolerance asked of both solvers (their defaults are 1e-6..1e-7; with big-M rows an
#: integrality error ε lets a ReLU leak ε·M, so tighter is better for the verification).
FEASTOL = 1e-9


def import_solver(name: str) -> ModuleType:
    """The solver's python module, or :class:`MissingDependencyError` naming the extra."""
    module = SOLVER_MODULES[name]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"exact_robustness with solver={name!r} needs the {module} package: {INSTALL_HINT}"
        ) from exc


def solver_available(name: str) -> bool:
    try:
        import_solver(name)
    except MissingDependencyError:
        return False
    return True


@dataclass
class Problem:
    """A MILP / MIQCP in row form: ``min cost·v`` s.t. ``row_lo ≤ A v ≤ row_hi``, bounds,
    integrality, and for L2 one second-order cone ``‖v_x − centre‖₂ ≤ scale · v_t``."""

    col_lb: list[float] = field(default_factory=list)
    col_ub: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    integer: list[int] = field(default_factory=list)
    rows: list[tuple[float, float, np.ndarray, np.ndarray]] = field(default_factory=list)
    quad_centre: np.ndarray | None = None  # L2: Σ (x'_i − centre_i)² ≤ (scale · t)²
    t_col: int = -1
    d: int = 0
    #: the distance is ``scale`` times the objective (L2: t is scaled to about 1, which keeps the
    #: solver's absolute tolerances relative)
    scale: float = 1.0

    def add_cols(
        self, lb: np.ndarray, ub: np.ndarray, cost: float = 0.0, integer: bool = False
    ) -> np.ndarray:
        start = len(self.col_lb)
        self.col_lb += [float(v) for v in lb]
        self.col_ub += [float(v) for v in ub]
        self.cost += [cost] * len(lb)
        idx = np.arange(start, start + len(lb))
        if integer:
            self.integer += idx.tolist()
        return idx

    def add_row(self, lo: float, hi: float, idx: np.ndarray, val: np.ndarray) -> None:
        keep = val != 0
        self.rows.append((lo, hi, np.asarray(idx)[keep], np.asarray(val, dtype=np.float64)[keep]))


def build(
    net: AffineNet,
    bounds: list[tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    label: int,
    rival: int,
    p: float,
    cutoff: float,
    scale: float = 1.0,
) -> Problem:
    """The MIP of ``min ‖x' − x‖_p`` s.t. Ψ_rival(x') ≥ Ψ_label(x'), x' ∈ [lo, hi],
    objective ≤ ``cutoff`` (``inf``: none). ``bounds`` from :func:`interval_bounds` on [lo, hi];
    ``scale`` (L2) is the expected distance, used when there is no cutoff."""
    inf = math.inf
    prob = Problem(d=len(x))
    h_idx = prob.add_cols(lo, hi)  # x'
    # h_idx: the columns of the current layer's live units (first the input x')
    for k in range(len(net.weights) - 1):
        w, b = net.weights[k], net.biases[k]
        l, u = bounds[k]
        new_idx = np.full(len(b), -1)
        for i in range(len(b)):
            if u[i] <= 0:
                continue  # dead: the unit is 0 on the whole box
            row_w = w[i]
            if l[i] >= 0:  # stable active: a = W h + b
                (a,) = prob.add_cols(np.array([l[i]]), np.array([u[i]]))
                prob.add_row(b[i], b[i], np.r_[a, h_idx], np.r_[1.0, -row_w])
            else:
                (a,) = prob.add_cols(np.array([0.0]), np.array([u[i]]))
                (z,) = prob.add_cols(np.array([0.0]), np.array([1.0]), integer=True)
                # a ≥ W h + b
                prob.add_row(b[i], inf, np.r_[a, h_idx], np.r_[1.0, -row_w])
                # a ≤ W h + b − l (1 − z)
                prob.add_row(-inf, b[i] - l[i], np.r_[a, z, h_idx], np.r_[1.0, -l[i], -row_w])
                # a ≤ u z
                prob.add_row(-inf, 0.0, np.r_[a, z], np.r_[1.0, -u[i]])
            new_idx[i] = a
        live = new_idx >= 0
        h_idx = new_idx[live]
        # the next layer only sees live units: drop the dead columns of its weights
        net = _drop_dead(net, k + 1, live)
    w, b = net.weights[-1], net.biases[-1]
    prob.add_row(b[label] - b[rival], inf, h_idx, w[rival] - w[label])
    x_idx = np.arange(len(x))
    if math.isinf(p):
        (t,) = prob.add_cols(np.array([0.0]), np.array([cutoff]), cost=1.0)
        for i in range(len(x)):
            prob.add_row(-inf, x[i], np.array([x_idx[i], t]), np.array([1.0, -1.0]))
            prob.add_row(x[i], inf, np.array([x_idx[i], t]), np.array([1.0, 1.0]))
        prob.t_col = int(t)
    elif p == 1:
        t = prob.add_cols(np.zeros(len(x)), np.minimum(np.maximum(x - lo, hi - x), cutoff), cost=1.0)
        for i in range(len(x)):
            prob.add_row(-inf, x[i], np.array([x_idx[i], t[i]]), np.array([1.0, -1.0]))
            prob.add_row(x[i], inf, np.array([x_idx[i], t[i]]), np.array([1.0, 1.0]))
        if math.isfinite(cutoff):
            prob.add_row(-inf, cutoff, t, np.ones(len(t)))
    else:
        # a second-order cone ‖x' − x‖₂ ≤ scale·t: SCIP's cone handler closes the gap fast, where
        # the squared form Σ δ² ≤ t stalls on outer approximations (measured: 0.1 s vs > 20 s)
        prob.scale = cutoff if math.isfinite(cutoff) and cutoff > 0 else scale
        (t,) = prob.add_cols(np.array([0.0]), np.array([cutoff / prob.scale]), cost=1.0)
        prob.quad_centre = x.copy()
        prob.t_col = int(t)
    return prob


def _drop_dead(net: AffineNet, k: int, live: np.ndarray) -> AffineNet:
    weights = list(net.weights)
    weights[k] = weights[k][:, live]
    return AffineNet(tuple(weights), net.biases)


@dataclass(frozen=True)
class Outcome:
    """One solve: ``status`` in optimal / time_limit / infeasible / error, the best objective
    and the dual bound in distance units (``inf`` without a solution), and the input part of
    the solution."""

    status: str
    objective: float
    dual_bound: float
    x: np.ndarray | None
    nodes: int = 0


def solve_highs(prob: Problem, time_limit: float, gap: float, seed: int = 0) -> Outcome:
    highspy = import_solver("highs")
    h = highspy.Highs()
    for name, value in (
        ("output_flag", False),
        ("threads", 1),
        ("time_limit", max(float(time_limit), 0.01)),
        ("mip_rel_gap", float(gap)),
        ("mip_abs_gap", 1e-12),
        ("mip_feasibility_tolerance", FEASTOL),
        ("primal_feasibility_tolerance", FEASTOL),
        ("random_seed", seed),
    ):
        h.setOptionValue(name, value)
    n = len(prob.col_lb)
    inf = highspy.kHighsInf
    h.addVars(n, np.clip(np.array(prob.col_lb), -inf, inf), np.clip(np.array(prob.col_ub), -inf, inf))
    h.changeColsCost(n, np.arange(n, dtype=np.int32), np.array(prob.cost))
    starts = np.cumsum([0] + [len(r[2]) for r in prob.rows[:-1]]).astype(np.int32)
    idx = np.concatenate([r[2] for r in prob.rows]).astype(np.int32)
    val = np.concatenate([r[3] for r in prob.rows])
    lo = np.clip(np.array([r[0] for r in prob.rows]), -inf, inf)
    hi = np.clip(np.array([r[1] for r in prob.rows]), -inf, inf)
    h.addRows(len(prob.rows), lo, hi, len(idx), starts, idx, val)
    if prob.integer:
        ints = np.array(prob.integer, dtype=np.int32)
        h.changeColsIntegrality(len(ints), ints, np.array([highspy.HighsVarType.kInteger] * len(ints)))
    h.run()
    status = h.getModelStatus()
    ms = highspy.HighsModelStatus
    info = h.getInfo()
    has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = np.array(h.getSolution().col_value[: prob.d]) if has_sol else None
    obj = float(info.objective_function_value) if has_sol else math.inf
    if status == ms.kOptimal:
        dual = float(info.mip_dual_bound) if prob.integer else obj
        return Outcome("optimal", obj, min(dual, obj), x, int(info.mip_node_count) if prob.integer else 0)
    if status == ms.kInfeasible:
        return Outcome("infeasible", math.inf, math.inf, None)
    if status in (ms.kTimeLimit, ms.kInterrupt, ms.kIterationLimit, ms.kSolutionLimit):
        dual = float(info.mip_dual_bound) if prob.integer else 0.0
        return Outcome(
            "time_limit", obj, max(dual, 0.0) if math.isfinite(dual) else 0.0, x, int(info.mip_node_count)
        )
    return Outcome("error", obj, 0.0, x)


def solve_scip(prob: Problem, time_limit: float, gap: float, seed: int = 0) -> Outcome:
    pyscipopt = import_solver("scip")
    m = pyscipopt.Model()
    m.hideOutput()
    m.setParam("limits/time", max(float(time_limit), 0.01))
    m.setParam("limits/gap", float(gap))
    m.setParam("numerics/feastol", FEASTOL)
    m.setParam("randomization/randomseedshift", seed)
    m.setParam("parallel/maxnthreads", 1)
    inf = m.infinity()
    integer = set(prob.integer)
    v = [
        m.addVar(
            lb=max(lb, -inf),
            ub=min(ub, inf),
            obj=c,
            vtype="B" if i in integer else "C",
        )
        for i, (lb, ub, c) in enumerate(zip(prob.col_lb, prob.col_ub, prob.cost, strict=True))
    ]
    qs = pyscipopt.quicksum
    for lo, hi, idx, val in prob.rows:
        expr = qs(float(a) * v[int(i)] for i, a in zip(idx, val, strict=True))
        if lo == hi:
            m.addCons(expr == lo)
        else:
            if math.isfinite(lo):
                m.addCons(expr >= lo)
            if math.isfinite(hi):
                m.addCons(expr <= hi)
    if prob.quad_centre is not None:
        c = prob.quad_centre
        # ‖(x' − x)/scale‖₂ ≤ t with both sides about 1: SCIP's absolute tolerance on a cone
        # written in raw units (ρ² ~ 1e-5) would allow a relative error of 1e-4 in ρ
        # (auxiliary u = (x' − x)/scale keeps the cone in the pattern SCIP's SOC handler detects)
        k = 1.0 / prob.scale
        u = [m.addVar(lb=-inf, ub=inf) for _ in range(prob.d)]
        for i in range(prob.d):
            m.addCons(u[i] - k * v[i] == -k * float(c[i]))
        t = v[prob.t_col]
        m.addCons(qs(ui * ui for ui in u) <= t * t)
    m.optimize()
    status = m.getStatus()
    nsol = m.getNSols()
    x = None
    obj = math.inf
    if nsol > 0:
        sol = m.getBestSol()
        x = np.array([m.getSolVal(sol, v[i]) for i in range(prob.d)])
        obj = float(m.getSolObjVal(sol)) * prob.scale
    dual = float(m.getDualbound()) * prob.scale
    nodes = int(m.getNNodes())
    if status in ("optimal", "gaplimit"):
        return Outcome("optimal", obj, min(dual, obj), x, nodes)
    if status == "infeasible":
        return Outcome("infeasible", math.inf, math.inf, None, nodes)
    if status in ("timelimit", "userinterrupt", "nodelimit", "memlimit", "sollimit", "bestsollimit"):
        return Outcome("time_limit", obj, max(dual, 0.0) if math.isfinite(dual) else 0.0, x, nodes)
    return Outcome("error", obj, 0.0, x, nodes)
