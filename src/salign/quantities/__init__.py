"""The paper's per-sample quantities: saliency maps, alignment α, linearised robustness ρ̃, β.

Reference implementation of the definitions of Etmann, Lunz, Maass & Schönlieb, "On the
Connection Between Adversarial Robustness and Saliency Map Interpretability" (ICML 2019,
arXiv 1905.04172); the numbering (D1–D7, T1–T4) follows ``docs/theory.md``.

Notation: Ψ = (Ψ^1, …, Ψ^K) are the logits, i = i* = argmax_k Ψ^k(x) the predicted class
(or a given ``target``), j a rival class, and

* saliency map (D1):          s(x) = ∇_x Ψ^i(x)
* binarized gradient (D2):    g_j(x) = ∇_x (Ψ^i − Ψ^j)(x)
* nearest rival (D2):         j* = argmin_{j≠i} (Ψ^i − Ψ^j)(x) / ‖g_j(x)‖
* alignment (D3):             α(x) = |⟨x − origin, s(x)⟩| / ‖s(x)‖
* normalized alignment (D4):  α(x) / ‖x − origin‖ = |cos ∠(x − origin, s(x))|
* linearized robustness (D6): ρ̃(x) = min_{j≠i} (Ψ^i − Ψ^j)(x) / ‖g_j(x)‖
* effective bias (D7):        β(x) = Ψ(x) − ⟨∇Ψ(x), x⟩  (of Ψ^i, or of the pair Ψ^i − Ψ^j)

Every function here is batched (inputs (N, C, H, W) or (N, D)), works on any device and in
float32/float64, runs the model in eval mode and restores the caller's mode afterwards
(:func:`salign._validation.eval_mode`), and differentiates with ``torch.autograd.grad`` with
respect to the *input only*, so no parameter ``.grad`` is ever touched.

All input gradients of one sample come from ONE forward pass: the logits' graph is kept and
walked backwards once per needed class combination (see :func:`class_gradients`). In eval
mode the samples of a batch do not interact, so the gradient of Σ_n Ψ^{c_n}(x_n) with respect
to the batch holds every per-sample gradient ∇Ψ^{c_n}(x_n) at once.

Layout (private modules; this package's namespace is the API): ``_graph`` (one forward, many
VJPs; the gradient strategies), ``_gradients`` (``logit_vjps``, ``class_gradients``),
``_rivals`` (j*, the runner-up, the binarized pair every rival choice goes through),
``_saliency`` (D1, D2), ``_alignment`` (α, ρ̃, β, the bias-shifted input), ``_analysis``
(``Analysis``, ``analyze``) and ``_common`` (argument checks, per-sample numerics).
"""

from __future__ import annotations

from salign.quantities._alignment import alignment, bias_shifted_input, effective_bias, linearized_robustness
from salign.quantities._analysis import Analysis, analyze
from salign.quantities._gradients import class_gradients, logit_vjps
from salign.quantities._graph import DEFAULT_STRATEGY, STRATEGIES
from salign.quantities._rivals import NearestRival, nearest_rival
from salign.quantities._saliency import saliency

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Analysis",
    "NearestRival",
    "alignment",
    "analyze",
    "bias_shifted_input",
    "class_gradients",
    "effective_bias",
    "linearized_robustness",
    "logit_vjps",
    "nearest_rival",
    "saliency",
]
