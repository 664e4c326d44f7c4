"""Machinery shared by every attack: call counting, best-point tracking with early exit, the
final line search onto the boundary, verification, and the public wrapper around each attack.

Every attack in this package is a pure function ``_impl(model, x, labels, tracker, **options)``
that only *proposes* points: it reports each visited point to a :class:`Tracker`, which keeps
the smallest adversarial one per sample (never the last iterate) and decides which samples are
still worth a step. :func:`run_attack` then tightens the best point by a line search towards
``x``, re-forwards it to verify it, and packs an :class:`AttackResult`.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from salign._validation import (
    check_differentiable,
    check_inputs,
    check_labels,
    check_logits,
    check_model,
    eval_mode,
    run_model,
)
from salign.attacks.result import FLAG_NAMES, AttackResult, concat_results
from salign.errors import InputError, ModelOutputError

#: Relative outward pushes ``x + (adv − x)(1 + push)`` tried, in order, for a found point that
#: fails the final verification (see :func:`verify`); the distance grows by at most 1%.
VERIFY_PUSHES: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


class CountingModel(nn.Module):
    """Wrap a model to count per-sample forward and backward passes.

    A forward of a batch of ``n`` inputs adds ``n`` to :attr:`forwards`; every backward pass that
    reaches the output of such a forward adds ``n`` to :attr:`backwards` (a tensor hook on the
    logits). The output shape is checked on every call.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0

    def forward(self, x: Tensor) -> Tensor:
        out = run_model(self.model, x)
        n = x.shape[0]
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != n or out.shape[1] < 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ModelOutputError(
                f"model output must be a tensor of logits of shape ({n}, K>=2), got {shape}"
            )
        check_differentiable(out, x)
        self.forwards += n
        if out.requires_grad:
            out.register_hook(self._backward_hook(n))
        return out

    def _backward_hook(self, n: int) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            self.backwards += n

        return hook


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` on every parameter (attacks need input gradients only, and
    this skips the weight-gradient work); restore each flag afterwards, also on errors."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def batch_view(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector ``t`` (n,) to broadcast against ``like`` (n, ...)."""
    return t.view(-1, *([1] * (like.ndim - 1)))


def l2_norm(t: Tensor) -> Tensor:
    """Per-sample L2 norm of a batch."""
    return t.flatten(1).norm(p=2, dim=1)


def quantize(x: Tensor, levels: int | None) -> Tensor:
    """Round ``x`` in [0, 1] to ``levels`` evenly spaced values (identity when ``levels`` is None)."""
    if levels is None:
        return x
    return (x * (levels - 1)).round() / (levels - 1)


def adversarial(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(is_adversarial, finite): prediction differs from ``labels`` and all logits are finite."""
    finite = torch.isfinite(logits).all(1)
    return (logits.argmax(1) != labels) & finite, finite


class Tracker:
    """Best adversarial point per sample, sanity flags, and the set of samples still active.

    Early exit with annealed schedules. Attacks whose step sizes follow a schedule over
    ``steps`` (DDN, FMN, ALMA) call :meth:`set_schedule` and read each sample's position with
    :meth:`schedule_step`. A sample whose best distance stalls early in the schedule, while
    the step size is still large, has not converged: it oscillates around the boundary. So
    instead of stopping it, :meth:`end_step` fast-forwards it to the last ``patience`` steps of
    its schedule (small steps), restarting from its best point; only a sample that stalls in
    that tail, or whose schedule ends, stops. Without a schedule a stalled sample stops.

    Args:
        x: clean inputs (n, ...).
        labels: classes to move away from (n,).
        patience: if given, every ``patience`` steps a sample whose best distance improved by less
            than a relative ``tolerance`` since the last check is fast-forwarded or stops.
        tolerance: relative improvement below which a sample counts as converged.
    """

    def __init__(
        self, x: Tensor, labels: Tensor, *, patience: int | None = None, tolerance: float = 1e-3
    ) -> None:
        n = x.shape[0]
        self.x = x
        self.labels = labels
        self.best_adv = x.clone()
        self.best_dist = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        self.zero_gradient = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.nonfinite = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.active = torch.ones(n, dtype=torch.bool, device=x.device)
        self.patience = patience
        self.tolerance = tolerance
        self._reference = self.best_dist.clone()
        self.steps: int | None = None
        self.offset = torch.zeros(n, dtype=torch.long, device=x.device)
        self.fast_forwarded = torch.zeros(n, dtype=torch.bool, device=x.device)  # for reports

    @property
    def found(self) -> Tensor:
        return torch.isfinite(self.best_dist)

    def active_indices(self) -> Tensor:
        return self.active.nonzero().squeeze(1)

    def set_schedule(self, steps: int) -> None:
        """Declare that the attack anneals its step sizes over ``steps`` iterations."""
        self.steps = steps
        self.offset.zero_()
        self.fast_forwarded.zero_()

    def schedule_step(self, idx: Tensor, step: int) -> Tensor:
        """Each sample's position in its schedule (float, in [0, steps)): ``step`` + skipped steps."""
        assert self.steps is not None, "set_schedule() first"
        position = (self.offset[idx] + step).clamp(max=self.steps - 1)
        return position.to(self.x.dtype)

    def update(
        self, idx: Tensor, adv: Tensor, dist: Tensor, is_adv: Tensor, finite: Tensor | None = None
    ) -> None:
        """Record points ``adv`` (rows ``idx``) with distances ``dist``; keep the better adversarial ones."""
        adv, dist = adv.detach(), dist.detach()
        better = is_adv & (dist < self.best_dist[idx])
        if bool(better.any()):
            rows = idx[better]
            self.best_dist[rows] = dist[better]
            self.best_adv[rows] = adv[better]
        if finite is not None:
            self.nonfinite[idx] |= ~finite

    def mark_zero_gradient(self, idx: Tensor, zero: Tensor) -> None:
        self.zero_gradient[idx] |= zero

    def end_step(self, step: int) -> Tensor | None:
        """Early exit after iteration ``step``: drop samples at distance 0 and, every ``patience``
        steps, the converged ones (or fast-forward them, see the class docstring).

        Returns the indices fast-forwarded now (the attack restarts them from their best
        point), or None.
        """
        self.active &= self.best_dist > 0
        jumped: Tensor | None = None
        if self.patience and (step + 1) % self.patience == 0:
            improved = self.best_dist < (1 - self.tolerance) * self._reference
            stalled = ~improved & self.found & self.active
            if self.steps is None:
                self.active &= ~stalled
            else:
                tail_start = self.steps - self.patience
                # a sample already fast-forwarded sits at or past tail_start: it cannot skip again
                can_skip = stalled & (self.offset + step + 1 < tail_start)
                self.offset = torch.where(can_skip, tail_start - (step + 1), self.offset)
                self.fast_forwarded |= can_skip
                self.active &= ~(stalled & ~can_skip)
                if bool(can_skip.any()):
                    jumped = can_skip.nonzero().squeeze(1)
            self._reference = self.best_dist.clone()
        if self.steps is not None:
            self.active &= self.offset + step + 1 < self.steps  # this sample's schedule is over
        return jumped


def gradient_direction(grad: Tensor, tracker: Tracker, idx: Tensor) -> Tensor:
    """Unit-L2 direction of ``grad`` per sample; random where the gradient vanished (flagged)."""
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    norms = l2_norm(grad)
    zero = norms <= torch.finfo(grad.dtype).tiny * 1e3
    tracker.mark_zero_gradient(idx, zero)
    direction = grad / batch_view(norms.clamp_min(torch.finfo(grad.dtype).tiny), grad)
    if bool(zero.any()):
        noise = torch.randn_like(direction[zero])
        direction[zero] = noise / batch_view(l2_norm(noise), noise)
    return direction


@torch.no_grad()
def boundary_search(
    model: nn.Module,
    x: Tensor,
    adv: Tensor,
    labels: Tensor,
    steps: int,
    levels: int | None = None,
    endpoint_adversarial: bool | None = False,
) -> tuple[Tensor, Tensor]:
    """Bisect on the segment from ``x`` to the adversarial ``adv`` for the adversarial point
    closest to ``x``: returns (points, is_adversarial). ``steps`` forwards; with ``levels`` the
    candidate points are quantised first, so the result stays adversarial after quantisation.
    ``endpoint_adversarial``: what is known about ``adv`` itself (``None``: check it, 1 forward)."""
    n = x.shape[0]
    lo = torch.zeros(n, device=x.device, dtype=x.dtype)
    hi = torch.ones(n, device=x.device, dtype=x.dtype)
    if endpoint_adversarial is None:
        ok, _ = adversarial(model(quantize(adv, levels)), labels)
    else:
        ok = torch.full((n,), endpoint_adversarial, dtype=torch.bool, device=x.device)
    delta = adv - x
    for _ in range(steps):
        mid = (lo + hi) / 2
        point = quantize(x + batch_view(mid, x) * delta, levels)
        is_adv, _ = adversarial(model(point), labels)
        hi = torch.where(is_adv, mid, hi)
        lo = torch.where(is_adv, lo, mid)
        ok |= is_adv
    return quantize(x + batch_view(hi, x) * delta, levels), ok


def refine(
    model: nn.Module, tracker: Tracker, steps: int, levels: int | None = None, polish_steps: int = 2
) -> None:
    """Tighten every found sample's best point: a line search onto the boundary, then
    ``polish_steps`` rounds of one DeepFool step from x with the gradients taken at the best
    point (the nearest linearised boundary among the top classes there) followed by a line
    search along the new direction. A point is only ever replaced by a better verified one."""
    if steps <= 0:
        return
    for round_ in range(polish_steps + 1):
        idx = (tracker.found & (tracker.best_dist > 0)).nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        x, labels, best = tracker.x[idx], tracker.labels[idx], tracker.best_adv[idx]
        candidate = best if round_ == 0 else _project_on_boundary(model, x, best, labels)
        # the best points are known to be adversarial, unless they still have to be quantised
        known = (None if levels is not None else True) if round_ == 0 else False
        points, ok = boundary_search(model, x, candidate, labels, steps, levels, known)
        if round_ == 0 and levels is not None:
            # the iterates were not quantised: replace every best point by its quantised
            # line-search result (or drop it), so that only quantised points compete
            tracker.best_dist[idx] = float("inf")
        tracker.update(idx, points, l2_norm(points - x), ok)


def class_gradients(
    model: nn.Module, x: Tensor, classes: Tensor, graph: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Logits (n, K) at ``x`` and the input gradients (n, k, ...) of the logits of ``classes`` (n, k).

    Internal to the attacks: unlike the public :func:`salign.quantities.class_gradients` it can
    reuse the graph of a forward the attack already made and counted, and skips input
    validation on every step. One forward (skipped when ``graph = (x_leaf, logits)`` of an earlier forward is given), then
    one backward per column of ``classes`` through the same graph.
    """
    with torch.enable_grad():
        if graph is None:
            leaf = x.detach().requires_grad_(True)
            logits = model(leaf)
        else:
            leaf, logits = graph
        picked = logits.gather(1, classes)
        grads = []
        for j in range(classes.shape[1]):
            (g,) = torch.autograd.grad(picked[:, j].sum(), leaf, retain_graph=j + 1 < classes.shape[1])
            grads.append(g)
    return logits.detach(), torch.stack(grads, 1)


def candidate_classes(logits: Tensor, labels: Tensor, candidates: int) -> Tensor:
    """(n, k) class indices: the label first, then the ``k − 1`` highest other logits."""
    k = min(candidates, logits.shape[1])
    others = logits.scatter(1, labels[:, None], float("-inf")).topk(k - 1, dim=1).indices
    return torch.cat([labels[:, None], others], 1)


def _project_on_boundary(
    model: nn.Module,
    x: Tensor,
    boundary: Tensor,
    labels: Tensor,
    overshoot: float = 0.02,
    candidates: int = 10,
) -> Tensor:
    """One DeepFool step from ``x`` using the gradients at the boundary point ``b``: with
    ``f_k = Ψ_k − Ψ_y`` linearised at ``b``, move x onto the nearest hyperplane
    ``f_k(b) + ⟨∇f_k(b), p − b⟩ = 0`` (exact for linear models), with a small overshoot, clamped."""
    b = boundary.detach()
    with torch.no_grad():
        logits = model(b)
    classes = candidate_classes(logits, labels, candidates)
    z, grads = class_gradients(model, b, classes)
    with torch.no_grad():
        zc = z.gather(1, classes)
        f = zc[:, 1:] - zc[:, :1]
        w = torch.nan_to_num((grads[:, 1:] - grads[:, :1]).flatten(2), nan=0.0, posinf=0.0, neginf=0.0)
        w_sq = w.pow(2).sum(2)
        offset = f + (w * (x - b).flatten(1)[:, None, :]).sum(2)  # linearised f_k at x (< 0 there)
        dist = offset.abs() / w_sq.sqrt().clamp_min(1e-30)
        dist = torch.where(w_sq > 0, dist, torch.full_like(dist, float("inf")))
        best = dist.argmin(1)
        rows = torch.arange(len(x), device=x.device)
        w_best, off_best, sq_best = w[rows, best], offset[rows, best], w_sq[rows, best]
        coef = torch.where(sq_best > 0, -off_best / sq_best.clamp_min(1e-30), torch.zeros_like(sq_best))
        target = x + (batch_view(coef * (1 + overshoot), x) * w_best.view_as(x))
        return target.clamp(0, 1)


@torch.no_grad()
def verify(
    model: nn.Module, x: Tensor, adv: Tensor, labels: Tensor, clean_class: Tensor, levels: int | None = None
) -> dict[str, Tensor]:
    """Clamp (and quantise) ``adv``, forward it twice, and keep it only where both forwards
    confirm a class other than ``labels``. A found point (``adv ≠ x``) that fails is pushed
    outwards from x by the relative amounts of :data:`VERIFY_PUSHES`, in order, and kept at the
    first push that both forwards confirm. Returns adv, distance, success, adv_class,
    nondeterministic."""
    adv = quantize(adv.clamp(0, 1), levels)
    first, second = model(adv), model(adv)
    adv1, _ = adversarial(first, labels)
    adv2, _ = adversarial(second, labels)
    pred1, pred2 = first.argmax(1), second.argmax(1)
    scale = 1 + first.abs().nan_to_num(0, 0, 0).amax(1)
    nondet = (pred1 != pred2) | ((first - second).abs().nan_to_num(1e30, 1e30, 1e30).amax(1) > 1e-4 * scale)
    success = adv1 & adv2
    # A found point can fail here although the attack saw it adversarial: the line search leaves
    # it within round-off of the boundary, and a float32 forward of a differently composed batch
    # (the attack forwards only its active samples) can land on the other side. Rather than lose
    # the sample, push such points outwards from x by a tiny relative amount until they verify.
    retry = ~success & (l2_norm(adv - x) > 0)
    for push in VERIFY_PUSHES:
        if not bool(retry.any()):
            break
        rows = retry.nonzero().squeeze(1)
        cand = quantize((x[rows] + (adv[rows] - x[rows]) * (1 + push)).clamp(0, 1), levels)
        f1, f2 = model(cand), model(cand)
        ok = adversarial(f1, labels[rows])[0] & adversarial(f2, labels[rows])[0]
        if bool(ok.any()):
            good = rows[ok]
            adv[good], first[good], success[good] = cand[ok], f1[ok], True
            pred1[good] = f1[ok].argmax(1)
            retry[good] = False
    dist = l2_norm(adv - x)
    dist = torch.where(success, dist, torch.full_like(dist, float("inf")))
    adv = torch.where(batch_view(success, adv), adv, x)
    adv_class = torch.where(success, pred1, clean_class)
    return {
        "adv": adv,
        "distance": dist,
        "success": success,
        "adv_class": adv_class,
        "nondeterministic": nondet,
    }


def prepare(
    model: object, x: object, labels: object, *, name: str = "attack", levels: object = None
) -> tuple[nn.Module, Tensor, Tensor | None]:
    """Validate model, inputs ([0, 1], finite), labels (None allowed) and ``levels``; return them."""
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 2):
        raise InputError(f"levels must be an integer >= 2 (e.g. 256) or None, got {levels!r}")
    model = check_model(model)
    x = check_inputs(x)
    model = check_model(model, x)
    if labels is not None:
        labels = check_labels(labels, x.shape[0])
        labels = labels.to(x.device)
    return model, x.clamp(0, 1), labels  # type: ignore[return-value]


def clean_forward(cm: CountingModel, x: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
    """Forward the clean batch (logits must be finite), fix labels (default: predicted class)."""
    with torch.no_grad():
        logits = check_logits(cm(x), x.shape[0])
    num_classes = logits.shape[1]
    pred = logits.argmax(1)
    if labels is None:
        labels = pred
    else:
        check_labels(labels, x.shape[0], num_classes)
    return labels, pred


def chunks(n: int, batch_size: int | None) -> list[slice]:
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    size = n if batch_size is None else batch_size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def flags_of(tracker: Tracker | None, verified: dict[str, Tensor], attacked: Tensor) -> dict[str, int]:
    """Sanity-flag counts for one verified result (``attacked`` marks correctly classified rows)."""
    flags = dict.fromkeys(FLAG_NAMES, 0)
    if tracker is not None:
        flags["zero_gradient"] = int(tracker.zero_gradient.sum())
        flags["nonfinite_logits"] = int(tracker.nonfinite.sum())
    flags["not_found"] = int((~verified["success"] & attacked).sum())
    flags["nondeterministic"] = int(verified["nondeterministic"].sum())
    return flags


def warn_flags(name: str, flags: dict[str, int], n: int) -> None:
    """Warn once per non-zero sanity flag; never silent."""
    messages = {
        "zero_gradient": "zero input gradients at some step (gradient masking or saturated loss); "
        "a random direction was used",
        "nonfinite_logits": "the model returned NaN/Inf logits at some visited point",
        "not_found": "no verified adversarial point found (success rate below 100%)",
        "nondeterministic": "two verification forwards disagree: the model is non-deterministic",
        "worse_than_deepfool": "an attack ended more than 0.1% farther from x than DeepFool (weak attack or budget)",
    }
    for key, count in flags.items():
        if count:
            warnings.warn(f"{name}: {count} of {n} samples: {messages[key]}", RuntimeWarning, stacklevel=4)


AttackImpl = Callable[..., None]


def run_attack(
    name: str,
    impl: AttackImpl,
    model: object,
    x: object,
    labels: object,
    *,
    line_search_steps: int,
    polish_steps: int,
    levels: int | None,
    batch_size: int | None,
    warn: bool = True,
    patience: int | None = None,
    **options: Any,
) -> AttackResult:
    """Validate, run ``impl`` chunk by chunk under eval mode with frozen parameters, tighten by a
    line search, verify, and return an :class:`AttackResult`."""
    model, x, labels = prepare(model, x, labels, levels=levels)
    start = options.get("start")
    if start is not None:
        start = check_inputs(start, name="start")
        if start.shape != x.shape:
            raise InputError(f"start must have the shape of x {tuple(x.shape)}, got {tuple(start.shape)}")
        options["start"] = start.to(device=x.device, dtype=x.dtype).clamp(0, 1)
    parts = []
    with eval_mode(model), frozen_parameters(model):
        for chunk in chunks(x.shape[0], batch_size):
            clock = time.perf_counter()
            cm = CountingModel(model)
            xc = x[chunk]
            lab, clean_class = clean_forward(cm, xc, None if labels is None else labels[chunk])
            tracker = Tracker(xc, lab, patience=patience)
            attacked = clean_class == lab
            tracker.best_dist[~attacked] = 0
            tracker.active &= attacked
            chunk_options = {
                key: value[chunk] if isinstance(value, Tensor) and value.shape[:1] == x.shape[:1] else value
                for key, value in options.items()
            }
            impl(cm, xc, lab, tracker, **chunk_options)
            refine(cm, tracker, line_search_steps, levels, polish_steps)
            verified = verify(cm, xc, tracker.best_adv, lab, clean_class, levels)
            verified["distance"][~attacked] = 0
            verified["success"][~attacked] = True
            flags = flags_of(tracker, verified, attacked)
            parts.append(
                AttackResult(
                    adv=verified["adv"],
                    distance=verified["distance"],
                    success=verified["success"],
                    adv_class=verified["adv_class"],
                    labels=lab,
                    forwards=cm.forwards,
                    backwards=cm.backwards,
                    seconds=time.perf_counter() - clock,
                    flags=flags,
                )
            )
    result = concat_results(parts)
    if warn:
        warn_flags(name, result.flags, len(result))
    return result


def check_positive(value: object, name: str, *, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise an InputError naming ``name`` unless ``value`` is a positive (or non-negative) number."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not (value >= 0 if allow_zero else value > 0):  # type: ignore[operator]
        kind = "integer" if integer else "number"
        raise InputError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}"
        )
