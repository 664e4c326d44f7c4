"""captum, the dependency for every attribution beyond the plain gradient: binding a captum
method to :class:`~salign.attributions._targets.TargetScore`, checking its arguments, running it.

salign never re-implements a captum method (Integrated Gradients, SmoothGrad, ...); it only
points captum at the scalar f that ``mode=`` and ``rival=`` choose.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from torch import Tensor, nn

from salign.errors import InputError, InputTypeError, MissingDependencyError, describe_error

#: Keyword arguments of a captum ``attribute`` call that salign sets itself.
RESERVED = ("inputs", "target", "additional_forward_args", "return_convergence_delta")


def captum_attr() -> Any:
    """The ``captum.attr`` module, or a one-line error saying how to install it."""
    try:
        import captum.attr
    except ImportError as exc:
        raise MissingDependencyError(
            "attributions beyond 'gradient' and 'input_x_gradient' need captum: "
            "pip install 'saliency-alignment[attributions]'"
        ) from exc
    return captum.attr


def is_captum_method(method: object) -> bool:
    """A captum attribution object or class (without importing captum when it is not one)."""
    cls = method if isinstance(method, type) else type(method)
    return any(base.__module__.startswith("captum.") for base in cls.__mro__)


def method_name(method: object) -> str:
    return method.__name__ if isinstance(method, type) else type(method).__name__


def bind(method: object, model: nn.Module, wrapper: nn.Module) -> Any:
    """A captum method attributing ``wrapper`` (the scalar f) instead of ``model``'s logits.

    A class is constructed on the wrapper; an object (e.g. ``IntegratedGradients(model,
    multiply_by_inputs=False)`` or ``NoiseTunnel(Saliency(model))``) is shallow-copied with every
    reference to ``model`` replaced by the wrapper, so its own options are kept. Layer and
    neuron methods, and objects built on another function, are refused with the reason.
    """
    attr = captum_attr()
    name = method_name(method)
    cls = method if isinstance(method, type) else type(method)
    if issubclass(cls, attr.LayerAttribution | attr.NeuronAttribution):
        raise InputError(
            f"captum {name} attributes a layer or neuron and needs a layer argument; salign "
            "attributes the input: use an input attribution (e.g. IntegratedGradients)"
        )
    if not issubclass(cls, attr.Attribution):
        raise InputTypeError(f"{name} is not a captum attribution method (captum.attr.Attribution)")
    if isinstance(method, type):
        try:
            return method(wrapper)
        except (TypeError, AttributeError) as exc:
            raise InputError(
                f"captum {name} cannot be built from the model alone ({describe_error(exc)}); "
                f"pass an instance, e.g. {name}(model, ...)"
            ) from exc
    bound: Any = copy.copy(method)
    for key, value in vars(bound).items():
        if value is model:
            setattr(bound, key, wrapper)
        elif isinstance(value, attr.Attribution):
            setattr(bound, key, bind(value, model, wrapper))
    if getattr(bound, "attribution_method", None) is not None:  # NoiseTunnel and friends
        bound.forward_func = bound.attribution_method.forward_func
    if getattr(bound, "forward_func", None) is not wrapper:
        raise InputError(
            f"captum {name} was built on another function than the model passed to salign; "
            "build it on that model (or pass the class)"
        )
    return bound


def _required(bound: Any) -> tuple[set[str], set[str], bool]:
    """(required, accepted, takes **kwargs) keyword names of ``bound.attribute``, with those of
    a wrapped method (NoiseTunnel passes its extra keywords on)."""
    params = inspect.signature(bound.attribute).parameters.values()
    required = {
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name != "inputs"
    }
    accepted = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    inner = getattr(bound, "attribution_method", None)
    if inner is not None:
        req_in, acc_in, var_in = _required(inner)
        return required | req_in, accepted | acc_in, var_in
    return required, accepted, var_kw


def check_options(bound: Any, name: str, options: dict[str, Any]) -> None:
    """Refuse options salign sets, options the method does not take, and missing required ones
    (e.g. GradientShap's ``baselines``, Occlusion's ``sliding_window_shapes``)."""
    reserved = sorted(set(options) & set(RESERVED))
    if reserved:
        raise InputError(
            f"{name}: {', '.join(reserved)} is set by salign (target= and mode= choose what is "
            "attributed; boundary_attributions reports the completeness gap)"
        )
    required, accepted, var_kw = _required(bound)
    missing = sorted(required - set(options) - set(RESERVED))
    if missing:
        raise InputError(
            f"captum {name} needs {', '.join(missing)}, which salign cannot choose for you; "
            f"pass {', '.join(f'{m}=...' for m in missing)} to attribute()"
        )
    unknown = sorted(set(options) - accepted)
    if unknown and not var_kw:
        raise InputError(
            f"captum {name} does not take {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(accepted - set(RESERVED)))}"
        )


def run(bound: Any, x: Tensor, classes: Tensor, options: dict[str, Any]) -> Tensor:
    """``bound.attribute`` of f at ``x`` (inputs detached and requiring grad, as captum wants)."""
    out = bound.attribute(
        x.detach().requires_grad_(True), target=0, additional_forward_args=(classes,), **options
    )
    if not isinstance(out, Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(f"captum {method_name(bound)} returned {shape}, not an attribution of x's shape")
    return out.detach()
