"""``attribute``: the attribution map of any method, for the scalar f that ``mode`` chooses."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from salign._norms import parse_norm
from salign._validation import check_labels, eval_mode
from salign.attacks._model import chunks
from salign.attacks.result import AttackResult
from salign.attributions import _captum
from salign.attributions._targets import AttributionMode, TargetScore, check_attribution_mode, score_at
from salign.errors import InputError, InputTypeError
from salign.quantities._common import Rival, check_candidates, check_model_and_inputs, check_rival_arg

#: Attribution names (shared/design.md, "Attributions"); a captum method is accepted where a
#: name is.
METHODS: tuple[str, ...] = (
    "gradient",
    "input_x_gradient",
    "integrated_gradients",
    "smoothgrad",
    "boundary_gradient",
    "boundary_integrated_gradients",
)
#: The names that need a boundary point x_b (``boundary=``).
BOUNDARY_METHODS: tuple[str, ...] = ("boundary_gradient", "boundary_integrated_gradients")

#: SmoothGrad's defaults (Smilkov et al. 2017: noise of 10–20% of the input range, and the
#: average settles after a few tens of samples); captum's own (σ = 1, 5 samples) suit
#: standardised inputs, not [0, 1] images.
SMOOTHGRAD_DEFAULTS: dict[str, Any] = {"nt_samples": 16, "stdevs": 0.15}


def check_method(method: object) -> str | object:
    """A known name, or a captum attribution object/class; else a one-line error naming it."""
    if isinstance(method, str):
        if method not in METHODS:
            raise InputError(
                f"unknown attribution {method!r}; known: {', '.join(METHODS)} (or a captum method)"
            )
        return method
    if _captum.is_captum_method(method):
        return method
    raise InputTypeError(
        f"method must be an attribution name ({', '.join(METHODS)}) or a captum attribution "
        f"method, got {type(method).__name__}"
    )


def check_rival_for(method: object, rival: object) -> object:
    """``rival=None`` means "nearest" at x and "adversarial" (the class x_b reached) for the
    boundary methods; "adversarial" needs a boundary."""
    boundary = method in BOUNDARY_METHODS
    if rival is None:
        return "adversarial" if boundary else "nearest"
    if rival == "adversarial":
        if not boundary:
            raise InputError(
                "rival='adversarial' (the class the boundary point reached) needs a boundary method"
            )
        return rival
    check_rival_arg(rival)
    return rival


def captum_call(
    method: str | object, model: nn.Module, wrapper: nn.Module, n: int, options: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """The bound captum method and its options (salign's memory-bounding defaults added) for a
    name or a user's captum method; arguments are checked before anything runs."""
    attr = _captum.captum_attr()
    opts = dict(options)
    if method in ("integrated_gradients", "boundary_integrated_gradients"):
        bound, name = attr.IntegratedGradients(wrapper), "IntegratedGradients"
        opts.setdefault("internal_batch_size", n)  # one chunk of path points at a time
    elif method == "smoothgrad":
        bound, name = attr.NoiseTunnel(attr.Saliency(wrapper)), "SmoothGrad (NoiseTunnel(Saliency))"
        opts = {**SMOOTHGRAD_DEFAULTS, "nt_samples_batch_size": 1, **opts, "nt_type": "smoothgrad"}
        opts.setdefault("abs", False)  # the signed map, as the paper's saliency
    else:
        bound, name = _captum.bind(method, model, wrapper), _captum.method_name(method)
    _captum.check_options(bound, name, opts)
    return bound, opts


def chunk_options(options: dict[str, Any], x: Tensor, part: slice) -> dict[str, Any]:
    """Options with per-sample tensors (x's shape, e.g. baselines) cut to the chunk."""
    return {k: v[part] if isinstance(v, Tensor) and v.shape == x.shape else v for k, v in options.items()}


def attribute(
    model: nn.Module,
    x: Tensor,
    method: str | object = "gradient",
    target: Tensor | None = None,
    *,
    mode: AttributionMode = "binarized",
    rival: Rival | str | None = None,
    boundary: Tensor | AttackResult | None = None,
    batch_size: int | None = None,
    candidates: int | None = None,
    check_range: bool = True,
    norm: float | str = 2,
    **method_options: Any,
) -> Tensor:
    """The attribution map of ``x`` by ``method`` for the scalar f = ``mode`` of the logits.

    Methods (names of shared/design.md, "Attributions"):

    * ``"gradient"``: ∇f(x), the paper's saliency map (D1/D2; = :func:`salign.saliency` for
      ``mode="logit"``/``"binarized"``);
    * ``"input_x_gradient"``: x ⊙ ∇f(x) (Shrikumar et al. 2016; = captum's InputXGradient);
    * ``"integrated_gradients"``: captum's IntegratedGradients of f (Sundararajan et al. 2017;
      ``baselines`` default 0 = α's origin, ``n_steps`` 50, ``method`` "gausslegendre");
    * ``"smoothgrad"``: captum's NoiseTunnel(Saliency) of f, signed (Smilkov et al. 2017;
      ``nt_samples`` 16, ``stdevs`` 0.15, the noise σ in [0, 1] pixel units);
    * ``"boundary_gradient"``: ∇f(x_b) at the boundary point x_b (Wang, Fredrikson & Datta,
      ICML 2022); ``"boundary_integrated_gradients"``: IG of f along the straight path from x_b
      to x (captum IG with baseline x_b), so Σ attributions = f(x) − f(x_b). Both need
      ``boundary=``; see :func:`boundary_attributions` for every boundary quantity at once;
    * a captum attribution class (built on f) or object (its own options kept; it must have
      been built on ``model``), e.g. ``IntegratedGradients(model, multiply_by_inputs=False)``,
      ``GradientShap`` with ``baselines=...``, ``DeepLift``.

    f (``mode``) is Ψ^i (``"logit"``), Ψ^i − Ψ^j (``"binarized"``, the default, as in
    :func:`salign.alignment`), log softmax(Ψ)^i or Ψ^i − max_{k≠i} Ψ^k (the shift-invariant
    ``"log_softmax"`` and ``"margin"``; Srinivas & Fleuret, ICLR 2021); the classes i, j are
    fixed at x (for margin the max is re-taken at every point a method visits).

    Args:
        model: classifier returning logits; run in eval mode (mode restored afterwards); only
            input gradients are taken, no parameter ``.grad`` is touched.
        x: inputs (N, C, H, W) or (N, D) in [0, 1], on the model's device.
        method: a name above or a captum attribution method.
        target: class i per sample (N,); None = the predicted class (for the boundary methods
            with an :class:`~salign.AttackResult`: the class it attacked, ``result.labels``).
        mode: "binarized" (default), "logit", "log_softmax" or "margin".
        rival: for ``mode="binarized"``: "nearest" (j*, D2), "runner_up", a tensor (N,) of
            classes, or "adversarial" (the class x_b reached; boundary methods only). None =
            "nearest", and "adversarial" for the boundary methods.
        boundary: the boundary points x_b (a tensor of x's shape, or the
            :class:`~salign.AttackResult` whose ``adv`` they are); boundary methods only. Samples
            whose attack failed get NaN rows and a warning that counts them.
        batch_size: samples per chunk (None = all at once). IG's ``internal_batch_size`` and
            SmoothGrad's ``nt_samples_batch_size`` default to one chunk's worth of points, so
            memory stays that of one forward and backward of ``batch_size`` samples.
        candidates: for ``rival="nearest"``: the number of rival classes searched.
        check_range: reject inputs outside [0, 1].
        norm: the norm in which ``rival="nearest"`` is nearest.
        **method_options: passed to captum's ``attribute`` (e.g. ``n_steps``, ``baselines``,
            ``internal_batch_size``, ``nt_samples``, ``stdevs``); tensors of x's shape are cut
            into the chunks with x.

    Returns:
        The attribution, x's shape, dtype and device.
    """
    name = check_method(method)
    if name in BOUNDARY_METHODS:
        from salign.attributions._boundary import boundary_maps

        return boundary_maps(
            model,
            x,
            boundary,
            str(name),
            target,
            mode=mode,
            rival=rival,
            batch_size=batch_size,
            candidates=candidates,
            check_range=check_range,
            norm=norm,
            **method_options,
        )
    if boundary is not None:
        raise InputError(f"boundary= is only used by {', '.join(BOUNDARY_METHODS)}, not by {_label(name)}")
    mode_s = check_attribution_mode(mode)
    riv = check_rival_for(name, rival)
    cand = check_candidates(candidates)
    p = parse_norm(norm)
    check_model_and_inputs(model, x, check_range)
    if target is not None:
        check_labels(target, x.shape[0], name="target")
    if isinstance(riv, Tensor):
        check_labels(riv, x.shape[0], name="rival")
    if name in ("gradient", "input_x_gradient") and method_options:
        raise InputError(f"{name} takes no method options, got {', '.join(sorted(method_options))}")
    wrapper = TargetScore(model, mode_s)
    parts = chunks(x.shape[0], batch_size)
    bound: Any = None
    opts: dict[str, Any] = {}
    if name not in ("gradient", "input_x_gradient"):
        bound, opts = captum_call(name, model, wrapper, parts[0].stop - parts[0].start, method_options)
    out = []
    with eval_mode(model):
        for part in parts:
            xs = x[part]
            tgt = None if target is None else target[part]
            rv = riv[part] if isinstance(riv, Tensor) else riv
            scored = score_at(model, xs, tgt, mode_s, rv, cand, p)
            if name == "gradient":
                out.append(scored.gradient)
            elif name == "input_x_gradient":
                out.append(xs.detach() * scored.gradient)
            else:
                out.append(_captum.run(bound, xs, scored.classes, chunk_options(opts, x, part)))
    return torch.cat(out)


def _label(method: object) -> str:
    return method if isinstance(method, str) else _captum.method_name(method)
