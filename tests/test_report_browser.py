"""report.html in headless Chromium with the network cut off: every plot decodes at its PNG's
size, nothing is fetched or referred to outside the page, and `experiments.report --screenshot`
keeps WORKDIR/report.png at the window size. Pages with a broken data: image, an https image,
a file beside the page and a runtime fetch show that the checker reports each of them.

Needs Debian's `chromium` (`make test` installs it); without it these tests fail, not skip."""

import base64
import io

import numpy as np
import pytest
from matplotlib import image

from tests import runs
from tests.report_workdir import write_workdir
from tools import browser

PLOTS = ("exact_match.png", "families.png", "learning_curves.png", "meta_training.png",
         "overoptimization.png")


@pytest.fixture(scope="module")
def chromium():
    try:
        return browser.find_chromium()
    except browser.BrowserError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, chromium):
    """A compare workdir after `experiments.report --screenshot` (the report and report.png)."""
    del chromium
    path = tmp_path_factory.mktemp("report")
    write_workdir(path)
    out = runs.run_module("experiments.report", f"--workdir={path}", "--screenshot")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "report.html:" not in out.stderr, out.stderr[-3000:]  # no problem was logged
    return path


def test_screenshot_is_a_png_of_the_window(workdir):
    png = workdir / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(png)  # decodes the whole file: [H, W, channels]
    width, height = browser.WINDOW
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.01  # the page was drawn, not a blank window


def test_every_plot_decodes_offline(workdir):
    rendering = browser.render(str(workdir / "report.html"))
    assert sorted(img["alt"] for img in rendering.images) == list(PLOTS)
    for img in rendering.images:
        height, width = image.imread(workdir / "plots" / img["alt"]).shape[:2]
        assert img["scheme"] == "data:" and img["complete"], img
        assert (img["width"], img["height"]) == (width, height), img
    assert rendering.resources == [] and rendering.references == []
    assert browser.problems(str(workdir / "report.html"), rendering) == []


def test_report_html_has_no_external_reference(workdir):
    assert browser.external_references((workdir / "report.html").read_text()) == []


def test_static_check_finds_every_kind_of_reference():
    page = """<html><head>
      <link rel="stylesheet" href="https://cdn.example/a.css">
      <script src="//cdn.example/b.js"></script>
      <style>@import "http://example.org/c.css"; body{background:url('d.png')}
             h1{background:url(data:image/png;base64,AAAA)}</style></head>
      <body style="background-image: url(http://example.org/e.png)">
      <a href="#top">top</a><img src="data:image/png;base64,AAAA">
      <img srcset="data:image/png;base64,AAAA 1x, https://example.org/f.png 2x">
      <a href="plots/g.png">g</a></body></html>"""
    found = browser.external_references(page)
    for url in ("https://cdn.example/a.css", "//cdn.example/b.js", "http://example.org/c.css",
                "d.png", "http://example.org/e.png", "https://example.org/f.png", "plots/g.png"):
        assert sum(url in f for f in found) == 1, (url, found)
    assert len(found) == 7 and not any("data:" in f or "#top" in f for f in found)


def _png(height, width) -> bytes:
    buf = io.BytesIO()
    image.imsave(buf, np.linspace(0, 1, height * width).reshape(height, width), format="png")
    return buf.getvalue()


def test_checker_reports_broken_external_and_fetched(tmp_path, chromium):
    del chromium
    good = base64.b64encode(_png(3, 5)).decode()
    broken = base64.b64encode(_png(3, 5)[:40]).decode()  # the header, then nothing
    (tmp_path / "beside.png").write_bytes(_png(2, 2))
    page = tmp_path / "page.html"
    page.write_text(
        f'<!DOCTYPE html><html><body><img alt="good" src="data:image/png;base64,{good}">'
        f'<img alt="broken" src="data:image/png;base64,{broken}">'
        '<img alt="external" src="https://example.org/plot.png">'
        '<img alt="beside" src="beside.png">'
        '<script>fetch("https://example.org/data.json").catch(() => {});</script>'
        '</body></html>')
    screenshot = tmp_path / "page.png"
    rendering = browser.render(str(page), screenshot=str(screenshot), window=(640, 480))
    images = {img["alt"]: img for img in rendering.images}
    assert (images["good"]["width"], images["good"]["height"]) == (5, 3)
    assert images["broken"]["scheme"] == "data:" and images["broken"]["width"] == 0
    assert images["external"]["scheme"] == "https:" and images["external"]["width"] == 0
    # Rendered from a copy in a temporary folder: a file beside the page does not load.
    assert images["beside"]["scheme"] == "file:" and images["beside"]["width"] == 0
    assert image.imread(screenshot).shape[:2] == (480, 640)

    found = browser.problems(str(page), rendering)
    assert not any("'good'" in p for p in found), found
    expected = ["<img alt='broken'", "does not decode",
                "<img alt='external'", "is loaded from https:",
                "the HTML refers to <img src=https://example.org/plot.png>",
                "the HTML refers to <img src=beside.png>",
                "the page fetched https://example.org/data.json"]
    for text in expected:
        assert any(text in p for p in found), (text, found)


def test_missing_chromium_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(browser.BrowserError, match="apt-get install -y --no-install-recommends"):
        browser.find_chromium()
