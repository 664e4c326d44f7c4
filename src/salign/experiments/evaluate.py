"""Evaluate one model on the fixed evaluation subset: the Analysis columns plus attack distances.

The unit of work is a *chunk* of consecutive evaluation samples: :func:`evaluate_chunk` runs
:func:`salign.analyze` (α, α_bin, ρ̃, β, ...) and :func:`salign.robustness` (ρ by the attack
ensemble, against the predicted class), once per norm of ``evaluation.norms``, and returns one
table row per sample. Chunks are saved as
they finish, so a killed evaluation resumes at the first missing chunk.

:func:`sample_views` keeps, for the first samples of the subset, what the interactive report
shows on a click: the input, its saliency map and the perturbation of the adversarial example
the attacks found, downscaled and quantised (``eval/<model>.views.npz``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salign._io import atomic_path
from salign._norms import parse_norm
from salign._validation import eval_mode
from salign.report import columns as C

#: Columns the attack step adds to the Analysis table (plus rho_<a>, success_<a> per attack).
ATTACK_COLUMNS = (C.RHO, C.RHO_SUCCESS, C.ADV_CLASS, C.BEST_ATTACK)
#: Longest side (pixels) of the per-sample views of :func:`sample_views`; larger inputs are
#: area-downscaled to it, so a 224×224 ImageNet sample costs 64×64 values per channel and view.
VIEW_SIDE = 64


def evaluation_subset(n_total: int, n: int, seed: int) -> Tensor:
    """Indices of the evaluation subset: ``n`` of ``range(n_total)`` drawn without replacement by
    a generator seeded with ``seed``, sorted. The same (n_total, n, seed) always gives the same
    indices, so every model of a study sees the same images. ``n >= n_total`` takes all."""
    if n >= n_total:
        return torch.arange(n_total)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_total, generator=gen)[:n].sort().values


def gallery_positions(labels: Tensor, k: int) -> list[int]:
    """Positions (into the evaluation subset) of up to ``k`` gallery images: the first image of
    each class in order of appearance, then the next images in order."""
    chosen: list[int] = []
    seen: set[int] = set()
    for pos, lab in enumerate(labels.tolist()):
        if len(chosen) == k:
            break
        if lab not in seen:
            seen.add(lab)
            chosen.append(pos)
    for pos in range(len(labels)):
        if len(chosen) >= k:
            break
        if pos not in chosen:
            chosen.append(pos)
    return sorted(chosen[:k])


def evaluate_chunk(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    sample_ids: Tensor,
    *,
    rival: str = "nearest",
    candidates: int | None = None,
    batch_size: int | None = None,
    attacks: list[str] | tuple[str, ...] | Mapping[float, Sequence[str]] = ("deepfool", "ddn", "fmn", "alma"),
    budget: str = "standard",
    steps: int | None = None,
    attack_batch_size: int | None = None,
    seed: int = 0,
    norms: Sequence[float] = (2.0,),
    attributions: Sequence[tuple[str, Any, Mapping[str, Any]]] = (),
    boundary: bool = False,
    quality_threshold: float = 0.5,
) -> tuple[Any, dict[str, Any]]:
    """Per-sample table of one chunk and its costs.

    Args:
        model: classifier returning logits, on x's device.
        x: the chunk's inputs in [0, 1].
        labels: true classes (N,), −1 where unknown (then ``correct`` is False there).
        sample_ids: index of each sample in the dataset split (the table's ``sample_id``).
        rival: passed to :func:`salign.analyze`.
        candidates: passed to :func:`salign.analyze`.
        batch_size: passed to :func:`salign.analyze`.
        attacks: passed to :func:`salign.robustness` (``labels=None``: ρ is measured against
            the predicted class, as in the paper); one list for every norm, or a mapping
            norm → list.
        budget: passed to :func:`salign.robustness`.
        steps: passed to :func:`salign.robustness`.
        attack_batch_size: passed to :func:`salign.robustness` as its ``batch_size``.
        seed: seeds torch's RNG before each norm's attacks, so a chunk's result does not depend
            on what ran before it (resumed runs reproduce uninterrupted ones, and the L2 columns
            of a multi-norm study equal those of an L2-only one).
        norms: the Lp norms (2, ∞, 1): for each p, ``analyze(norm=p)`` and
            ``robustness(norm=p)``; the L2 columns keep their names, the others get the norm's
            suffix (:func:`salign.report.columns.norm_column`).
        attributions: ``(label, method, options)`` per attribution method: its columns
            (:func:`attribution_columns`) join the L2 columns.
        boundary: add the boundary attributions of the L2 attack's boundary points
            (:func:`attribution_columns`); no further attack is run.
        quality_threshold: the stroke threshold of :func:`salign.attributions.saliency_quality`.

    Returns:
        ``(frame, costs)``: a pandas DataFrame (``sample_id``, the Analysis columns, ``rho``,
        ``rho_success``, ``adv_class``, ``best_attack``, ``rho_<a>``, ``success_<a>``, each
        suffixed for p ≠ 2) and ``{"seconds_analyze", "seconds_attacks", "forwards",
        "backwards", "seconds_attributions", "flags", "warnings", "adversarial"}`` (summed over the norms; the attacks'
        sanity-flag counts, suffixed for p ≠ 2, and the warnings raised, which are recorded
        instead of printed: they go to ``eval/<model>.json`` and the report; ``adversarial``:
        the adversarial points of the first norm, L2 when evaluated, on the CPU, equal to ``x``
        where none was found — for :func:`sample_views`, not summed by :func:`merge_costs`).
    """
    import salign

    known = bool((labels >= 0).all())
    ordered = sorted((parse_norm(p) for p in norms), key=lambda p: p != 2)  # L2 first: its columns lead
    caught: list[Any] = []
    costs: dict[str, Any] = {"seconds_analyze": 0.0, "seconds_attacks": 0.0, "forwards": 0.0,
                             "backwards": 0.0, "seconds_attributions": 0.0, "flags": {}}  # fmt: skip
    frame = None
    for p in ordered:
        sfx = C.norm_suffix(p)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught_p:
            warnings.simplefilter("always")
            analysis = salign.analyze(
                model,
                x,
                labels.to(x.device) if known else None,
                rival=rival,  # type: ignore[arg-type]
                candidates=candidates,
                batch_size=batch_size,
                norm=p,
            )
        t1 = time.perf_counter()
        caught += caught_p
        part = analysis.to_frame()
        if frame is None:  # the first norm brings the shared columns
            frame = part.rename(columns={c: C.norm_column(c, p) for c in part.columns})
            frame.insert(0, C.SAMPLE_ID, sample_ids.cpu().numpy())
        else:
            for col in part.columns:
                if col not in C.SHARED_COLUMNS:
                    frame[C.norm_column(col, p)] = part[col].to_numpy()
        names = list(attacks[p]) if isinstance(attacks, Mapping) else list(attacks)
        torch.manual_seed(seed)
        with warnings.catch_warnings(record=True) as caught_p:
            warnings.simplefilter("always")
            result = salign.robustness(
                model,
                x,
                None,
                attacks=names,
                budget=budget,
                steps=steps,
                batch_size=attack_batch_size,
                norm=p,
            )
        caught += caught_p
        costs["seconds_analyze"] += t1 - t0
        costs["seconds_attacks"] += time.perf_counter() - t1
        frame[C.RHO + sfx] = result.distance.detach().cpu().double().numpy()
        frame[C.RHO_SUCCESS + sfx] = result.success.detach().cpu().numpy()
        frame[C.ADV_CLASS + sfx] = result.adv_class.detach().cpu().numpy()
        frame[C.BEST_ATTACK + sfx] = list(result.best_attack) if result.best_attack is not None else None
        for name, res in (result.per_attack or {}).items():
            if res is None:
                continue
            frame[C.ATTACK_PREFIX + name + sfx] = res.distance.detach().cpu().double().numpy()
            frame[C.SUCCESS_PREFIX + name + sfx] = res.success.detach().cpu().numpy()
        costs["forwards"] += float(result.forwards)
        costs["backwards"] += float(result.backwards)
        costs["flags"].update({key + sfx: value for key, value in result.flags.items()})
        if "adversarial" not in costs:
            costs["adversarial"] = result.adv.detach().cpu()
        if p == 2 and (attributions or boundary):
            t2 = time.perf_counter()
            torch.manual_seed(seed + 1)  # SmoothGrad's noise: the same for a resumed chunk
            with warnings.catch_warnings(record=True) as caught_p:
                warnings.simplefilter("always")
                extra = attribution_columns(
                    model,
                    x,
                    attributions,
                    boundary=result if boundary else None,
                    rival=rival,
                    candidates=candidates,
                    batch_size=batch_size,
                    threshold=quality_threshold,
                )
            caught += caught_p
            for col, values in extra.items():
                frame[col] = values
            costs["seconds_attributions"] += time.perf_counter() - t2
    assert frame is not None
    if not known:
        lab = labels.cpu().numpy()
        frame[C.LABEL] = lab
        frame[C.CORRECT] = (frame[C.PRED].to_numpy() == lab) & (lab >= 0)
    costs["warnings"] = [str(w.message) for w in caught]
    return frame, costs


def attribution_options(options: Mapping[str, Any], x: Tensor) -> dict[str, Any]:
    """The options of a config's attribution entry as captum takes them: a number given as
    ``baselines`` becomes a constant image (1, C, H, W) of x's dtype and device (GradientShap
    needs a tensor; IG and the others broadcast it over the batch)."""
    out = dict(options)
    value = out.get("baselines")
    if isinstance(value, int | float) and not isinstance(value, bool):
        out["baselines"] = torch.full((1, *x.shape[1:]), float(value), dtype=x.dtype, device=x.device)
    return out


def attribution_columns(
    model: nn.Module,
    x: Tensor,
    methods: Sequence[tuple[str, Any, Mapping[str, Any]]],
    *,
    boundary: Any = None,
    rival: str = "nearest",
    candidates: int | None = None,
    batch_size: int | None = None,
    threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """The attribution columns of one chunk (L2), named by :func:`salign.report.columns.attribution_column`.

    For each ``(label, method, options)`` (options as a config gives them,
    :func:`attribution_options`): α of the logit map a(x) of Ψ^{F(x)} and α_bin of the
    binarized map (the rival ``rival``, as :func:`salign.analyze`), both by
    :func:`salign.alignment` with the map given (D3/D4 with a in place of ∇Ψ), and the saliency
    quality of the logit map (:func:`salign.attributions.saliency_quality`: stroke_mass,
    stroke_lift, rank_correlation). With ``boundary`` (the L2 :class:`~salign.AttackResult`
    that gives ρ): the :func:`salign.attributions.boundary_attributions` columns
    (:data:`salign.report.columns.BOUNDARY_COLUMNS`; binarized maps with the class x_b reached
    as the rival, so s(x_b) is the normal of the boundary x_b lies on), the quality of the
    boundary gradient and boundary IG maps, and, as their reference at x, the quality of the
    binarized gradient map at x (method label ``gradient_binarized``).
    """
    from salign.attributions import attribute, boundary_attributions, saliency_quality
    from salign.quantities import alignment

    out: dict[str, np.ndarray] = {}

    def as_column(t: Tensor) -> np.ndarray:
        t = t.detach().cpu()
        return t.numpy() if t.dtype == torch.bool else t.double().numpy()

    def add_quality(label: str, maps: Tensor) -> None:
        q = saliency_quality(maps, x, threshold=threshold)
        for name in C.QUALITY_QUANTITIES:
            out[C.attribution_column(label, name)] = as_column(getattr(q, name))

    plain_binarized: Tensor | None = None  # the binarized gradient map, if a listed method computed it
    for label, method, given in methods:
        options = attribution_options(given, x)
        logit_map = attribute(model, x, method, mode="logit", batch_size=batch_size, **options)
        bin_map = attribute(
            model, x, method, mode="binarized", rival=rival, candidates=candidates, batch_size=batch_size, **options
        )  # fmt: skip
        out[C.attribution_column(label, "alignment")] = as_column(alignment(None, x, saliency=logit_map))
        out[C.attribution_column(label, "alignment_binarized")] = as_column(
            alignment(None, x, saliency=bin_map)
        )
        add_quality(label, logit_map)
        if method == "gradient":
            plain_binarized = bin_map
    if boundary is not None:
        b = boundary_attributions(model, x, boundary, batch_size=batch_size)
        for name, col in C.BOUNDARY_COLUMNS.items():
            out[col] = as_column(getattr(b, name))
        add_quality("boundary_gradient", b.saliency)
        add_quality("boundary_integrated_gradients", b.integrated_gradients)
        if plain_binarized is None:
            plain_binarized = attribute(
                model,
                x,
                "gradient",
                mode="binarized",
                rival=rival,
                candidates=candidates,
                batch_size=batch_size,
            )
        add_quality("gradient_binarized", plain_binarized)
    return out


def merge_costs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the numeric costs and flag counts of several chunks; keep each distinct warning once."""
    out: dict[str, Any] = {"seconds_analyze": 0.0, "seconds_attacks": 0.0, "forwards": 0.0, "backwards": 0.0,
                           "seconds_attributions": 0.0}  # fmt: skip
    flags: dict[str, int] = {}
    messages: list[str] = []
    for part in parts:
        for key in out:
            out[key] += float(part.get(key, 0.0))
        for key, value in part.get("flags", {}).items():
            flags[key] = flags.get(key, 0) + int(value)
        for msg in part.get("warnings", []):
            if msg not in messages:
                messages.append(msg)
    out["flags"] = flags
    out["warnings"] = messages
    return out


@torch.no_grad()
def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 500) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 10 classes) accuracy on the labelled samples
    (label ≥ 0) of ``x``; moves batches to the model's device."""
    device = next(model.parameters()).device
    keep = y >= 0
    x, y = x[keep], y[keep]
    if len(y) == 0:
        return {"accuracy": float("nan"), "accuracy_n": 0}
    top1 = top5 = 0
    k = 0
    with eval_mode(model):
        for start in range(0, len(y), batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            logits = model(xb)
            k = logits.shape[1]
            top1 += int((logits.argmax(1) == yb).sum())
            if k > 10:
                top5 += int((logits.topk(5, dim=1).indices == yb[:, None]).any(1).sum())
    out: dict[str, float] = {"accuracy": top1 / len(y), "accuracy_n": len(y)}
    if k > 10:
        out["top5"] = top5 / len(y)
    return out


def save_npz(path: Any, *, compressed: bool = False, **arrays: Any) -> None:
    """Write ``arrays`` to the ``.npz`` file ``path`` atomically (temp file + rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if compressed:
            np.savez_compressed(fh, **arrays)
        else:
            np.savez(fh, **arrays)


def save_gallery(path: Any, model: nn.Module, x: Tensor, sample_ids: Tensor) -> None:
    """Save the inputs and their predicted-logit saliency maps ∇Ψ^{F(x)}(x) for figure P1."""
    import salign

    grads = salign.saliency(model, x, mode="logit")
    save_npz(
        path,
        sample_id=sample_ids.cpu().numpy(),
        image=x.detach().cpu().float().numpy(),
        saliency=grads.detach().cpu().float().numpy(),
    )


def _downscale(t: Tensor, side: int) -> Tensor:
    """Area-average an NCHW batch so that its longest side is at most ``side`` pixels."""
    h, w = t.shape[-2:]
    if max(h, w) <= side:
        return t
    scale = side / max(h, w)
    return F.interpolate(t, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")


def _scaled_half(t: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``(t / max|t|)`` as float16 and ``max|t|`` as float32: float16 keeps three
    digits of any gradient's shape whatever its magnitude (raw gradients under- or overflow)."""
    peak = t.flatten(1).abs().amax(1).double()
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    unit = (t.double() / safe.view(-1, *([1] * (t.dim() - 1)))).cpu().numpy().astype(np.float16)
    return unit, peak.cpu().numpy().astype(np.float32)


def sample_views(
    model: nn.Module, x: Tensor, adversarial: Tensor, *, side: int = VIEW_SIDE
) -> dict[str, np.ndarray] | None:
    """The compact per-sample views the interactive report shows on a click.

    For each input: the image, its saliency map ∇Ψ^{F(x)}(x) (design.md D1, the map of figure
    P1) and the perturbation δ = x_adv − x of the nearest adversarial example found (ρ = ‖δ‖;
    zero where none was found). Each is area-downscaled to at most ``side`` pixels a side, then
    quantised: ``image`` as uint8 (x·255), ``saliency`` and ``perturbation`` as float16 divided
    by their per-sample max |·| (``saliency_scale``, ``perturbation_scale``, float32). The
    adversarial example is ``image/255 + perturbation·perturbation_scale``. ``None`` for inputs
    that are not NCHW images (nothing to show).
    """
    import salign

    if x.dim() != 4:
        return None
    grads = salign.saliency(model, x, mode="logit").detach()
    delta = adversarial.to(x.device).detach() - x.detach()
    image = (_downscale(x.detach(), side).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    saliency, saliency_scale = _scaled_half(_downscale(grads, side))
    perturbation, perturbation_scale = _scaled_half(_downscale(delta, side))
    return {
        "image": image,
        "saliency": saliency,
        "saliency_scale": saliency_scale,
        "perturbation": perturbation,
        "perturbation_scale": perturbation_scale,
    }
