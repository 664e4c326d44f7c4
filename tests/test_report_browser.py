"""The interactive report.html in a real headless browser (Debian's chromium + chromium-driver,
driven by selenium): a tiny real study's page loads offline with no console error and no
request, its scatter draws one point per evaluated sample and model, a click on a point shows
that sample's images, and a legend click hides a model in every plot."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _study_helpers import TINY, with_changes

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="needs Debian's chromium and its driver: apt-get install -y chromium chromium-driver",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) is not installed")

#: Flags for a headless Chromium that contacts nothing by itself.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1300,1600",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, logging the console and the network (CDP)."""
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def open_report(driver: Any, page: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Load ``page``; return the console messages of level SEVERE and the URLs of every request
    the page made (CDP ``Network.requestWillBeSent``) other than the page itself and data URIs."""
    driver.get_log("browser")  # drop what the browser's start page logged
    driver.get_log("performance")
    driver.get(page.as_uri())
    deadline = time.monotonic() + 60
    while not driver.execute_script(
        "var gd = document.getElementById('salign-explore');"
        "return document.readyState === 'complete' && !!(gd && gd._fullData);"
    ):
        assert time.monotonic() < deadline, "the plot was never drawn"
        time.sleep(0.2)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url != page.as_uri() and not url.startswith("data:"):
                requests.append(url)
    return errors, requests


def png_pixels(uri: str) -> np.ndarray:
    """The pixels of a PNG data URI as floats in [0, 1]."""
    from PIL import Image

    assert uri.startswith("data:image/png;base64,"), uri[:40]
    raw = base64.b64decode(uri.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)), dtype=np.float64) / 255.0


_POINTS_JS = """
var gd = document.getElementById('salign-explore');
var counts = {};
gd._fullData.forEach(function (t) {
  if (t.meta !== 'identity' && t.xaxis === 'x') { counts[t.meta] = t.x.length; }
});
var drawn = document.querySelectorAll('#salign-explore .subplot.xy .scatterlayer path.point').length;
return [counts, drawn];
"""

# The point of model `tag` with the largest ρ in the first plot (an outlier: nothing overlaps
# it), as its SVG element and the customdata plotly holds for it.
_OUTLIER_JS = """
var tag = arguments[0], best = null;
document.querySelectorAll('#salign-explore .subplot.xy .scatterlayer g.trace').forEach(function (g) {
  var cd = g.__data__;
  if (!cd || !cd[0] || cd[0].trace.meta !== tag) { return; }
  g.querySelectorAll('path.point').forEach(function (el) {
    var d = el.__data__;
    if (!best || d.x > best.x) { best = {el: el, x: d.x, i: d.i, custom: cd[0].trace.customdata[d.i]}; }
  });
});
return [best.el, Array.from(best.custom)];
"""


def test_tiny_study_report_in_a_headless_browser(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    from salign.experiments import run
    from salign.report import load_run
    from salign.report.figures import input_to_image, saliency_to_image
    from salign.report.interactive import finite_count

    report = run(with_changes(TINY), out=tmp_path / "run", quiet=True)
    loaded = load_run(tmp_path / "run")
    errors, requests = open_report(browser, report.html)
    assert errors == [], errors
    assert requests == [], f"the page fetched {requests}"
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

    # One point per evaluated sample (finite α, ρ) and model, in plotly's data and on screen.
    counts, drawn = browser.execute_script(_POINTS_JS)
    expected = {m.tag: finite_count(m) for m in loaded.models}
    assert counts == expected and sum(expected.values()) >= 40  # 2 models × 24 samples, ρ finite
    assert drawn == sum(expected.values())

    # A click on model "1"'s outlier shows that sample's saved views.
    model = loaded.models[1]
    element, custom = browser.execute_script(_OUTLIER_JS, model.tag)
    ActionChains(browser).move_to_element(element).click().perform()
    panel = browser.find_element("id", "salign-panel")
    sid = int(custom[0])
    assert panel.get_attribute("data-tag") == model.tag
    assert int(panel.get_attribute("data-sample")) == sid
    assert f"sample {sid}" in panel.text
    views = model.views
    assert views is not None
    pos = int(np.flatnonzero(views["sample_id"] == sid)[0])
    shown = {
        name: png_pixels(browser.find_element("id", f"salign-view-{name}").get_attribute("src"))
        for name in ("image", "saliency", "adversarial", "perturbation")
    }
    image = views["image"][pos].astype(np.float64) / 255
    delta = views["perturbation"][pos].astype(np.float64) * float(views["perturbation_scale"][pos])
    np.testing.assert_allclose(shown["image"], input_to_image(image)[0], atol=0.5 / 255)
    np.testing.assert_allclose(
        shown["saliency"], saliency_to_image(views["saliency"][pos])[0], atol=0.6 / 255
    )
    np.testing.assert_allclose(shown["adversarial"], np.clip(image + delta, 0, 1)[0], atol=0.6 / 255)
    assert np.abs(shown["perturbation"] - 0.5).max() > 0.4  # δ ≠ 0: the attack moved this sample
    other = int(views["sample_id"][(pos + 1) % len(views["sample_id"])])
    assert other != sid

    # The legend entry of model "0" hides it in all three plots (plotly acts on a click once
    # its double-click delay has passed).
    toggle = browser.find_elements("css selector", "#salign-explore .legend .traces .legendtoggle")[0]
    ActionChains(browser).move_to_element(toggle).click().perform()
    hidden_js = (
        "var tag = arguments[0];"
        "return document.getElementById('salign-explore')._fullData"
        ".filter(function (t) { return t.meta === tag; }).map(function (t) { return t.visible; });"
    )
    deadline = time.monotonic() + 5
    while browser.execute_script(hidden_js, loaded.models[0].tag) != ["legendonly"] * 3:
        assert time.monotonic() < deadline, browser.execute_script(hidden_js, loaded.models[0].tag)
        time.sleep(0.1)
    assert browser.execute_script(hidden_js, loaded.models[1].tag) == [True] * 3


def test_zoo_study_report_in_a_headless_browser(tmp_path: Path, browser: Any) -> None:
    """A model-zoo study (three forms of one user model, listed by spec, nothing trained): the
    page loads offline, draws one point per sample and listed model, and a click on a listed
    model's point opens that model's views."""
    from selenium.webdriver.common.action_chains import ActionChains

    from _spec_helpers import make_forms
    from salign.experiments import run
    from salign.report import load_run
    from salign.report.interactive import finite_count

    (tmp_path / "forms").mkdir()
    forms = make_forms(tmp_path / "forms")
    config = {
        "name": "zoo-browser",
        "dataset": {"name": "mnist"},
        "models": [
            {"tag": "mine", "spec": f"{forms['user']}:make_model", "weights": str(forms["state"])},
            {"tag": "exported", "spec": str(forms["pt2"])},
            {"tag": "ckpt", "spec": str(forms["ckpt"])},
        ],
        "evaluation": {"n": 12, "chunk_size": 6, "gallery": 2, "accuracy_n": 200},
        "attacks": {"names": ["deepfool", "ddn"], "budget": "fast", "steps": 10},
        "report": {"n_bootstrap": 100, "linear_sanity": False},
    }
    report = run(config, out=tmp_path / "run", quiet=True)
    loaded = load_run(tmp_path / "run")
    assert [m.tag for m in loaded.models] == ["mine", "exported", "ckpt"]
    errors, requests = open_report(browser, report.html)
    assert errors == [], errors
    assert requests == [], f"the page fetched {requests}"

    counts, drawn = browser.execute_script(_POINTS_JS)
    expected = {m.tag: finite_count(m) for m in loaded.models}
    assert counts == expected and min(expected.values()) >= 8
    assert len(set(expected.values())) == 1  # the same weights: the same finite samples
    assert drawn == sum(expected.values())

    element, custom = browser.execute_script(_OUTLIER_JS, "ckpt")
    ActionChains(browser).move_to_element(element).click().perform()
    panel = browser.find_element("id", "salign-panel")
    deadline = time.monotonic() + 5
    while panel.get_attribute("data-sample") in (None, ""):
        assert time.monotonic() < deadline, "the click opened no sample"
        time.sleep(0.1)
    assert int(panel.get_attribute("data-sample")) == int(custom[0])
    # the three forms overlap exactly, so the click may land on any of them; it shows a listed model
    assert panel.get_attribute("data-tag") in expected
    image = browser.find_element("id", "salign-view-image").get_attribute("src")
    assert image.startswith("data:image/png;base64,")
