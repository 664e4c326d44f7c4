"""Small tensor operations shared by the attacks: per-sample norms and their duals, projections
onto Lp balls, broadcasting, the logit margin, quantisation and the adversarial test."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from salign.errors import InputError


def batch_view(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector ``t`` (n,) to broadcast against ``like`` (n, ...)."""
    return t.view(-1, *([1] * (like.ndim - 1)))


def cosine_annealing(position: Tensor | float, steps: int, start: float, end: float) -> Tensor | float:
    """``end + (start − end) · (1 + cos(π · position / steps)) / 2``: the cosine schedule of DDN's
    and FMN's step sizes, per sample (``position`` (n,)) or one float for the whole batch."""
    if isinstance(position, float):
        return end + (start - end) * (1 + math.cos(math.pi * position / steps)) / 2
    return end + (start - end) * (1 + torch.cos(math.pi * position / steps)) / 2


def l2_norm(t: Tensor) -> Tensor:
    """Per-sample L2 norm of a batch."""
    return lp_norm(t, 2.0)


#: Whether the CPU fast paths of :func:`lp_norm` and :func:`clamp_between` are used for CPU
#: tensors. Each replaces one torch call by two or three that run faster on CPU but launch more
#: kernels, so other devices always take the plain call; ``False`` runs the plain calls on CPU
#: too (the kernel counts of docs/benchmarks/attacks-cost.md are those of a GPU this way).
CPU_FAST_PATHS = True


def cpu_fast_path(t: Tensor) -> bool:
    """Whether ``t`` takes the CPU fast paths (see :data:`CPU_FAST_PATHS`)."""
    return CPU_FAST_PATHS and t.device.type == "cpu"


def lp_norm(t: Tensor, p: float, start_dim: int = 1) -> Tensor:
    """Lp norm over the dimensions from ``start_dim`` on (per sample for a batch), p ∈ [1, ∞].

    For p = ∞ and p = 1 on CPU (:data:`CPU_FAST_PATHS`) this is ``max |t|`` and ``Σ |t|``:
    there torch's generic ``vector_norm(ord=...)`` takes 4–9 times as long for these two (a few
    tens of µs on an MNIST batch, paid every iteration of an attack;
    docs/benchmarks/attacks-cost.md), while on a GPU it is one kernel where they are two.
    """
    flat = t.flatten(start_dim)
    if cpu_fast_path(t):
        if math.isinf(p):
            return flat.abs().amax(-1)
        if p == 1:
            return flat.abs().sum(-1)
    return torch.linalg.vector_norm(flat, ord=p, dim=-1)


def minimal_step(w: Tensor, p: float) -> Tensor:
    """Per row of ``w`` (n, d): the s of smallest Lp norm with ⟨w, s⟩ = 1, so that moving by
    ``c · s`` changes ⟨w, ·⟩ by c at the Lp cost |c| / ‖w‖_q (Hölder's equality case):
    ``w / ‖w‖₂²`` for p = 2, ``sign(w) / ‖w‖₁`` for p = ∞, and ``sign(w_k) e_k / |w_k|`` at
    ``k = argmax |w|`` for p = 1. Rows with w = 0 give 0."""
    if p == 2:
        return w / w.pow(2).sum(1, keepdim=True).clamp_min(1e-30)
    if math.isinf(p):
        return w.sign() / w.abs().sum(1, keepdim=True).clamp_min(1e-30)
    k = w.abs().argmax(1, keepdim=True)
    top = w.gather(1, k)
    return torch.zeros_like(w).scatter(1, k, torch.where(top != 0, 1 / top, torch.zeros_like(top)))


def box_hyperplane_step(w: Tensor, c: Tensor, lo: Tensor, hi: Tensor, p: float) -> Tensor:
    """Per row of ``w`` (n, d): the δ of smallest Lp norm with ⟨w, δ⟩ = c (n,) and
    lo ≤ δ ≤ hi (lo ≤ 0 ≤ hi), i.e. the Lp projection onto a hyperplane intersected with the box
    (Croce & Hein, ICML 2020, §3.1, solved by sorting). Where no δ in the box reaches c, the box
    point with the largest sign(c)·⟨w, δ⟩. With s = sign(c) and ``room`` the distance to the box
    along sign(s·w): p = 1 fills the coordinates by decreasing |w| (a fractional knapsack);
    p = ∞ sets δ = sign(s·w) min(t, room), p = 2 δ = sign(s·w) min(t|w|, room), with t found on
    the sorted breakpoints of the piecewise linear ⟨w, δ(t)⟩."""
    shape = w.shape
    w, lo, hi = w.flatten(1), lo.flatten(1), hi.flatten(1)
    ws = w * torch.where(c >= 0, 1.0, -1.0).to(w.dtype)[:, None]
    target = c.abs()[:, None]
    room = torch.where(ws > 0, hi, -lo).clamp(min=0)
    a = ws.abs()
    if p == 1:
        order = a.argsort(1, descending=True)
        a_s, room_s = a.gather(1, order), room.gather(1, order)
        gain = a_s * room_s
        need = (target - (gain.cumsum(1) - gain)).clamp(min=0)
        amount = torch.where(a_s > 0, torch.minimum(room_s, need / a_s.clamp_min(1e-30)), 0.0)
        magnitude = torch.zeros_like(a).scatter(1, order, amount)
    else:
        scale = torch.ones_like(a) if math.isinf(p) else a  # δ_i = sign · scale_i · min(t, b_i)
        b = torch.where(scale > 0, room / scale.clamp_min(1e-30), 0.0)
        slope = a * scale
        order = b.argsort(1)
        b_s, m_s = b.gather(1, order), slope.gather(1, order)
        filled = (m_s * b_s).cumsum(1)  # gain of the coordinates saturated at t = b_(j)
        rest = m_s.sum(1, keepdim=True) - m_s.cumsum(1)  # slope of the unsaturated ones
        reached = filled + b_s * rest  # ⟨w, δ(b_(j))⟩, non-decreasing in j
        j = (reached < target).sum(1, keepdim=True)
        prev = (j - 1).clamp(min=0)
        first = j == 0
        base = torch.where(first, 0.0, filled.gather(1, prev))
        left = torch.where(first, m_s.sum(1, keepdim=True), rest.gather(1, prev))
        t = (target - base) / left.clamp_min(1e-30)
        t = torch.where(j >= a.shape[1], float("inf"), t)
        magnitude = scale * torch.minimum(t, b)
    return (ws.sign() * magnitude).view(shape)


def clamp_between(t: Tensor, lo: Tensor, hi: Tensor, *, out: Tensor | None = None) -> Tensor:
    """``clamp(t, lo, hi)`` with tensor bounds (broadcasting), into ``out`` if given. On CPU
    (:data:`CPU_FAST_PATHS`) a minimum then a maximum: 2–3× faster there than ``clamp`` with
    tensor bounds, one kernel more elsewhere."""
    if not cpu_fast_path(t):
        return torch.clamp(t, lo, hi, out=out)
    if out is None:
        return torch.maximum(torch.minimum(t, hi), lo)
    return torch.maximum(torch.minimum(t, hi, out=out), lo, out=out)


def project_on_ball(delta: Tensor, radius: Tensor, p: float, *, inplace: bool = False) -> Tensor:
    """The Euclidean projection of each δ (n, ...) onto the Lp ball of its ``radius`` (n,):
    rescaling for p = 2, clamping for p = ∞, soft thresholding at the level found by sorting
    for p = 1 (Duchi et al., ICML 2008). ``inplace``: overwrite ``delta`` for p = 2 and ∞ (and
    return it), which saves an allocation per step in the attacks' loops; p = 1 always returns
    a new tensor."""
    if p == 2:
        factor = batch_view((radius / l2_norm(delta).clamp_min(1e-12)).clamp(max=1), delta)
        return delta.mul_(factor) if inplace else delta * factor
    if math.isinf(p):
        r = batch_view(radius, delta)
        return clamp_between(delta, -r, r, out=delta if inplace else None)
    flat = delta.flatten(1)
    a = flat.abs()
    inside = a.sum(1) <= radius
    u = a.sort(1, descending=True).values
    cumulative = u.cumsum(1)
    ranks = torch.arange(1, u.shape[1] + 1, device=u.device, dtype=u.dtype)
    valid = u * ranks > cumulative - radius[:, None]
    count = valid.sum(1, keepdim=True).clamp(min=1)
    theta = ((cumulative.gather(1, count - 1) - radius[:, None]) / count.to(u.dtype)).clamp(min=0)
    shrunk = flat.sign() * (a - theta).clamp(min=0)
    return torch.where(inside[:, None], flat, shrunk).view_as(delta)


def project_on_l1_ball_in_box(delta: Tensor, radius: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The Euclidean projection of each δ (n, ...) onto the L1 ball of its ``radius`` (n,)
    intersected with the box lo ≤ δ ≤ hi (lo ≤ 0 ≤ hi), exactly and without a loop.

    By the KKT conditions of the separable problem, the projection is δ_i(θ) = sign(δ_i)
    clamp(|δ_i| − θ, 0, u_i), u_i the room of the box in the direction of δ_i, with θ = 0 if
    that point is inside the ball, else the θ > 0 at which Φ(θ) = Σ_i clamp(|δ_i| − θ, 0, u_i)
    equals the radius. Φ is piecewise linear and non-increasing, with breakpoints at |δ_i| − u_i
    (the coordinate leaves its bound) and |δ_i| (it reaches 0): sorting the 2d breakpoints gives
    Φ at each of them (a cumulative sum from the right, where Φ = 0, so that the sum stays the
    size of the radius) and θ by interpolation on the piece where Φ crosses the radius (the
    sort-based L1 projection of Duchi et al., ICML 2008, with the box's breakpoints added). One
    Newton step on Φ then removes the rounding of the sums, and a rescaling by a few ulps keeps
    ‖δ‖₁ ≤ radius as computed. About 30 kernels, against 8 per bisection step."""
    shape, dtype = delta.shape, delta.dtype
    flat, lo, hi = delta.flatten(1), lo.flatten(1), hi.flatten(1)
    a = flat.abs()
    room = torch.where(flat >= 0, hi, -lo).clamp_(min=0)
    capped = torch.minimum(a, room)  # |clamp(δ, lo, hi)|: the point at θ = 0
    inside = capped.sum(1) <= radius
    breaks, order = torch.cat([a - room, a], 1).sort(1)
    ones = torch.ones_like(a)
    slope = torch.cat([-ones, ones], 1).gather(1, order).cumsum(1)  # Φ' on (t_k, t_k+1), ≤ 0
    drop = slope[:, :-1] * (breaks[:, 1:] - breaks[:, :-1])  # Φ(t_k+1) − Φ(t_k)
    phi = torch.cat([-drop.flip(1).cumsum(1).flip(1), torch.zeros_like(a[:, :1])], 1)  # Φ(t_k)
    r = radius[:, None]
    k = ((phi > r).sum(1, keepdim=True) - 1).clamp_(min=0)  # the last breakpoint above the radius
    s_k = slope.gather(1, k).clamp(max=-1.0)
    theta = breaks.gather(1, k) + (phi.gather(1, k) - r) / -s_k
    # one Newton step on the exact Φ(θ), whose slope is minus the number of coordinates in their
    # linear piece
    level = (a - theta).clamp(min=0)
    linear = ((level > 0) & (level < room)).sum(1, keepdim=True).clamp(min=1).to(dtype)
    theta = theta + (torch.minimum(level, room).sum(1, keepdim=True) - r) / linear
    magnitude = torch.minimum((a - theta).clamp_(min=0), room)
    total = magnitude.sum(1, keepdim=True)
    magnitude = magnitude * torch.where(total > r, r / total * (1 - 4 * torch.finfo(dtype).eps), 1.0)
    shrunk = flat.sign() * magnitude
    clamped = torch.minimum(torch.maximum(flat, lo), hi)
    return torch.where(inside[:, None], clamped, shrunk).view(shape)


def quantize(x: Tensor, levels: int | None) -> Tensor:
    """Round ``x`` in [0, 1] to ``levels`` evenly spaced values (identity when ``levels`` is None)."""
    if levels is None:
        return x
    return (x * (levels - 1)).round() / (levels - 1)


def adversarial(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(is_adversarial, finite): prediction differs from ``labels`` and all logits are finite."""
    finite = (logits.abs() < math.inf).all(1)  # NaN fails too; fewer kernels than isfinite()
    return (logits.argmax(1) != labels) & finite, finite


def adversarial_by_margin(margin: Tensor, magnitude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(is_adversarial, finite) from the logit margin (:func:`logit_margin`): another class
    scores strictly higher than the label, and the margin is finite (a NaN logit, a +∞ one or a
    −∞ label logit makes it NaN or infinite). Two kernels fewer than :func:`adversarial`; a tie
    with the label counts as not adversarial. ``magnitude``: ``margin.abs()`` if the caller
    has it (one kernel fewer)."""
    finite = (margin.abs() if magnitude is None else magnitude) < math.inf  # NaN fails
    return (margin < 0) & finite, finite


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """``Ψ_y − max_{j≠y} Ψ_j`` per sample: positive while the label is predicted. (``max`` rather
    than ``amax``: its backward is one scatter, not four kernels.)"""
    label_logit = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).max(1).values
    return label_logit - other


def check_positive(value: object, name: str, *, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise an InputError naming ``name`` unless ``value`` is a positive (or non-negative) number."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not (value >= 0 if allow_zero else value > 0):  # type: ignore[operator]
        kind = "integer" if integer else "number"
        raise InputError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}"
        )


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    """Raise an InputError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
