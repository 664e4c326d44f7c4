"""The interactive section of ``report.html``: the α–ρ, ρ̃–ρ and α_bin–ρ̃ scatter plots (plotly,
its JavaScript inlined: the page stays one offline file) and a panel that shows, on hover or
click, the sample's image, saliency map, adversarial example and perturbation.

Every evaluated sample is a point (one trace per model and plot, keyed by the model's tag, so a
legend entry shows or hides that model in all three plots). The images come from the views the
evaluation saved (``eval/<tag>.views.npz``, :func:`salign.experiments.evaluate.sample_views`),
rendered here as small PNG data URIs: samples in evaluation order, every model's views of a
sample together, until ``image_mb`` megabytes (``report.interactive_mb``); the clean image of a
sample is embedded once for all models. The page's size is therefore bounded: plotly.js
(≈4.8 MB) + the static figures + the points (float32 plus four int32 labels, ≈35 bytes per
point and plot) + ``image_mb``, which :func:`salign.report.render` lowers to what is left of
:data:`PAGE_MB`.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from salign._norms import norm_label
from salign.report import columns as C
from salign.report._deps import require_plotly
from salign.report.rundata import ModelResult, RunData

#: Default cap on the megabytes of sample images embedded in the page (``report.interactive_mb``).
IMAGE_MB = 2.0
#: The images get at most what the rest of the page leaves of this many megabytes
#: (:func:`salign.report.render`), so many models or figures shrink the images, not the limit.
PAGE_MB = 9.5
#: The element ids the glue script and the browser test use.
PLOT_ID = "salign-explore"
PANEL_ID = "salign-panel"
DATA_ID = "salign-views"
VIEW_NAMES = ("image", "saliency", "adversarial", "perturbation")
#: A 1×1 transparent GIF: the panel's images before the first click.
BLANK_URI = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


@dataclass(frozen=True)
class ScatterPanel:
    """One plot of the section: ``y`` against ``x`` (table columns), titles in HTML."""

    x: str
    y: str
    title: str
    x_title: str
    y_title: str
    x_name: str
    y_name: str


PANELS = (
    ScatterPanel(C.RHO, C.ALPHA, "<i>α</i> vs <i>ρ</i>", "robustness <i>ρ</i>",
                 "alignment <i>α</i>", "ρ", "α"),
    ScatterPanel(C.RHO, C.RHO_LIN, "<i>ρ̃</i> vs <i>ρ</i> (linearization)", "robustness <i>ρ</i>",
                 "linearized robustness <i>ρ̃</i>", "ρ", "ρ̃"),
    ScatterPanel(C.RHO_LIN, C.ALPHA_BIN, "<i>α</i><sub>bin</sub> vs <i>ρ̃</i> (T4)",
                 "linearized robustness <i>ρ̃</i>", "binarized alignment <i>α</i><sub>bin</sub>", "ρ̃", "α_bin"),
)  # fmt: skip


def png_uri(image: np.ndarray) -> str:
    """An (H, W) or (H, W, 3) image in [0, 1] as a ``data:image/png;base64,...`` URI (8 bit)."""
    from PIL import Image

    arr = (np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def view_images(views: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """The four displayed images of the ``i``-th saved view, each (H, W) or (H, W, 3) in [0, 1]:
    the input; its saliency map and the perturbation δ with zero at mid-grey, each on its own
    symmetric scale (:func:`~salign.report.figures.saliency_to_image`: the saliency map as in P1,
    δ scaled by its max |δ|); the adversarial example x + δ."""
    from salign.report.figures import input_to_image, saliency_to_image

    image = np.asarray(views["image"][i], dtype=np.float64) / 255.0
    delta = np.asarray(views["perturbation"][i], dtype=np.float64) * float(views["perturbation_scale"][i])
    return {
        "image": input_to_image(image)[0],
        "saliency": saliency_to_image(np.asarray(views["saliency"][i], dtype=np.float64))[0],
        "adversarial": input_to_image(np.clip(image + delta, 0.0, 1.0))[0],
        "perturbation": saliency_to_image(delta, percentile=100.0)[0],
    }


def embedded_views(models: list[ModelResult], *, image_mb: float = IMAGE_MB) -> dict[str, Any]:
    """The JSON the glue script reads: ``uris`` (distinct PNG data URIs), ``views`` (tag →
    sample id → [image, saliency, adversarial, perturbation] indices into ``uris``, then max |δ|),
    ``labels`` (tag → model label) and ``count`` (tag → samples with images).

    Samples are taken in their saved order, every model's views of a sample together, until the
    URIs reach ``image_mb`` megabytes.
    """
    budget = image_mb * 1e6
    uris: list[str] = []
    index: dict[str, int] = {}
    used = 0

    def intern(uri: str) -> int:
        nonlocal used
        if uri not in index:
            index[uri] = len(uris)
            uris.append(uri)
            used += len(uri)
        return index[uri]

    out: dict[str, Any] = {"uris": uris, "views": {}, "labels": {}, "count": {}}
    for m in models:
        out["views"][m.tag] = {}
        out["labels"][m.tag] = m.label
        out["count"][m.tag] = 0
    longest = max((len(m.views["sample_id"]) for m in models if m.views is not None), default=0)
    for i in range(longest):
        if used >= budget:
            break
        for m in models:
            if m.views is None or i >= len(m.views["sample_id"]):
                continue
            imgs = view_images(m.views, i)
            entry: list[Any] = [intern(png_uri(imgs[name])) for name in VIEW_NAMES]
            entry.append(float(m.views["perturbation_scale"][i]))
            out["views"][m.tag][str(int(m.views["sample_id"][i]))] = entry
            out["count"][m.tag] += 1
    return out


def _rgb(color: Any) -> str:
    """A CSS colour from any matplotlib colour (an RGB(A) tuple, "tab:blue", "#1f77b4")."""
    from matplotlib.colors import to_rgb

    r, g, b = (round(255 * v) for v in to_rgb(color))
    return f"rgb({r},{g},{b})"


def _positive(values: list[np.ndarray]) -> bool:
    both = np.concatenate(values) if values else np.array([])
    return bool(both.size) and bool((both > 0).all())


def _log_axis(values: np.ndarray) -> dict[str, Any]:
    """A log axis; ticks at the powers of ten only when the values span two decades or more."""
    spans = values.size and np.log10(values.max() / values.min()) >= 2
    return {"type": "log", "dtick": 1} if spans else {"type": "log"}


def scatter_figure(run: RunData, with_images: dict[str, set[int]] | None = None) -> Any:
    """The plotly figure: :data:`PANELS` side by side, one trace per model and plot (``meta`` =
    the model's tag, ``customdata`` = sample id, label, prediction, attack class), an identity
    line per plot, log axes where every value is positive. The samples of ``with_images`` (tag →
    sample ids) are filled circles, the others open circles."""
    with_images = with_images or {}
    require_plotly()
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from salign.report.figures import model_colors

    colors = model_colors(run.models)
    panels = [p for p in PANELS if all(p.x in m.frame and p.y in m.frame for m in run.models)]
    fig = make_subplots(rows=1, cols=max(len(panels), 1), subplot_titles=[p.title for p in panels],
                        horizontal_spacing=0.08)  # fmt: skip
    for col, panel in enumerate(panels, start=1):
        xs, ys = [], []
        for m in run.models:
            f = m.frame
            x = f[panel.x].to_numpy(dtype=np.float64)
            y = f[panel.y].to_numpy(dtype=np.float64)
            keep = np.isfinite(x) & np.isfinite(y)
            info = np.stack(
                [
                    f[c].to_numpy() if c in f else np.full(len(f), -1)
                    for c in (C.SAMPLE_ID, C.LABEL, C.PRED, C.ADV_CLASS)
                ],
                axis=1,
            ).astype(np.int32)[keep]
            xs.append(x[keep])
            ys.append(y[keep])
            shown = with_images.get(m.tag, set())
            has = np.array([int(sid) in shown for sid in info[:, 0]], dtype=bool)
            symbol: Any = "circle" if has.all() else "circle-open" if not has.any() else [
                0 if h else 100 for h in has  # plotly's codes of circle and circle-open
            ]  # fmt: skip
            fig.add_trace(
                go.Scatter(
                    x=x[keep].astype(np.float32),
                    y=y[keep].astype(np.float32),
                    mode="markers",
                    name=m.label,
                    legendgroup=m.tag,
                    showlegend=col == 1,
                    meta=m.tag,
                    customdata=info,
                    marker={
                        "color": _rgb(colors[m.tag]),
                        "size": 6,
                        "opacity": 0.65,
                        "symbol": symbol,
                        "line": {"width": 1, "color": _rgb(colors[m.tag])},
                    },
                    hovertemplate=(
                        f"{html.escape(m.label)} · sample %{{customdata[0]}}<br>label %{{customdata[1]}} → "
                        f"pred %{{customdata[2]}} (adversarial: %{{customdata[3]}})<br>"
                        f"{panel.x_name} = %{{x:.3g}}, {panel.y_name} = %{{y:.3g}}<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
        log = _positive(xs) and _positive(ys)
        both = np.concatenate(xs + ys) if xs else np.array([])
        if both.size:
            lo, hi = float(both.min()), float(both.max())
            fig.add_trace(
                go.Scatter(
                    x=[lo, hi], y=[lo, hi], mode="lines", name="identity", legendgroup="identity",
                    showlegend=col == 1, hoverinfo="skip", meta="identity",
                    line={"color": "#666", "dash": "dash", "width": 1},
                ),
                row=1,
                col=col,
            )  # fmt: skip
        axis = _log_axis(both) if log else {}  # both axes span x and y (the identity line does)
        fig.update_xaxes(title_text=panel.x_title, row=1, col=col, **axis)
        fig.update_yaxes(title_text=panel.y_title, row=1, col=col, **axis)
    fig.update_layout(
        height=470,
        margin={"l": 60, "r": 20, "t": 70, "b": 55},
        template="plotly_white",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.12, "x": 0},
        hovermode="closest",
        font={"size": 11},
    )
    return fig


_GLUE_JS = """
(function () {
  var gd = document.getElementById('%(plot)s');
  var data = JSON.parse(document.getElementById('%(data)s').textContent);
  var panel = document.getElementById('%(panel)s');
  var names = %(names)s;
  var title = panel.querySelector('.panel-title');
  function show(pt) {
    var tag = pt.data.meta, cd = pt.customdata;
    if (!tag || !cd || tag === 'identity') { return; }
    var v = (data.views[tag] || {})[String(cd[0])];
    panel.dataset.tag = tag;
    panel.dataset.sample = String(cd[0]);
    title.textContent = data.labels[tag] + ' \\u00b7 sample ' + cd[0] + ' \\u00b7 label ' + cd[1] +
      ', predicted ' + cd[2] + ', adversarial class ' + cd[3] +
      (v ? ' \\u00b7 max |\\u03b4| = ' + v[4].toPrecision(3) : ' \\u00b7 no images saved for this sample');
    names.forEach(function (name, k) {
      var img = document.getElementById('salign-view-' + name);
      img.src = v ? data.uris[v[k]] : '%(blank)s';
    });
  }
  gd.on('plotly_click', function (ev) { show(ev.points[0]); });
  gd.on('plotly_hover', function (ev) { show(ev.points[0]); });
})();
"""


def interactive_html(run: RunData, *, image_mb: float = IMAGE_MB) -> str:
    """The section's HTML: the plotly figure with plotly.js inlined, the sample panel, the views
    as JSON and the glue script (click/hover → panel)."""
    views = embedded_views(run.models, image_mb=image_mb)
    fig = scatter_figure(run, {tag: set(map(int, by_id)) for tag, by_id in views["views"].items()})
    payload = json.dumps(views, separators=(",", ":")).replace("</", "<\\/")
    glue = _GLUE_JS % {"plot": PLOT_ID, "data": DATA_ID, "panel": PANEL_ID, "names": json.dumps(VIEW_NAMES),
                       "blank": BLANK_URI}  # fmt: skip
    plot = fig.to_html(
        full_html=False,
        include_plotlyjs=True,
        include_mathjax=False,
        div_id=PLOT_ID,
        config={"displaylogo": False, "responsive": True},
    )
    n = max((len(m.frame) for m in run.models), default=0)
    counts = sorted(set(views["count"].values()))
    stored = (
        "no sample images were saved (report.interactive_samples = 0, or an evaluation from before they existed)"
        if counts == [0] or not counts
        else f"images for the first {'/'.join(map(str, counts))} of the {n} samples of each model"
    )
    captions = {
        "image": "input <i>x</i>",
        "saliency": "saliency ∇Ψ<sup><i>i</i>*</sup>(<i>x</i>)",
        "adversarial": "adversarial example <i>x</i> + <i>δ</i>",
        "perturbation": "perturbation <i>δ</i> (±max |<i>δ</i>|)",
    }
    figures = "".join(
        f"<figure><img id='salign-view-{name}' alt='{name}' src='{BLANK_URI}'>"
        f"<figcaption>{captions[name]}</figcaption></figure>"
        for name in VIEW_NAMES
    )
    norm = "" if run.norm == 2 else f" ({norm_label(run.norm)})"
    return "\n".join(
        [
            f"<p class='sub'>Every evaluated sample is a point{norm}; hover or click one to see it below "
            f"({stored}: filled points, the others are open circles). Click a model in the legend to hide or show it in all three plots, double-click "
            "to show it alone; drag to zoom, double-click the plot to reset. Saliency and perturbation: "
            "zero at mid-grey, each on its own symmetric scale.</p>",
            plot,
            f"<div id='{PANEL_ID}' class='panel'><p class='panel-title'>Hover or click a point.</p>"
            f"<div class='views'>{figures}</div></div>",
            f"<script type='application/json' id='{DATA_ID}'>{payload}</script>",
            f"<script>{glue}</script>",
        ]
    )


def finite_count(model: ModelResult, panel: ScatterPanel = PANELS[0]) -> int:
    """How many points ``model`` contributes to ``panel`` (finite x and y)."""
    f = model.frame
    if panel.x not in f or panel.y not in f:
        return 0
    x = f[panel.x].to_numpy(dtype=np.float64)
    y = f[panel.y].to_numpy(dtype=np.float64)
    return int(np.sum(np.isfinite(x) & np.isfinite(y)))
