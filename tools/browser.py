"""Opens an HTML page in headless Chromium with the network cut off, to check that a report is
self-contained: every <img> decodes and nothing is fetched or referred to outside the page.

  rendering = browser.render("W/report.html", screenshot="W/report.png")
  browser.problems("W/report.html", rendering)  # [] for a self-contained page

Chromium is Debian's `chromium` package (`make test` installs it); $CHROMIUM names another
binary. The page is rendered from a copy in a temporary folder (so a relative path to a file
beside the page does not load) with a probe script appended: a second after the load event it
records each image's resolved scheme, `complete` and natural size, the URLs in the live DOM's
src/href attributes and `performance.getEntriesByType("resource")` (data: URIs are not fetched,
so a self-contained page has none); `--dump-dom` reads them back.
"""

from __future__ import annotations

import base64
import dataclasses
import html.parser
import json
import os
import re
import shutil
import subprocess
import tempfile

from learned_loss.core import errors

BINARIES = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (1280, 2000)  # width, height of the window and so of the screenshot, in pixels
_PROBE_ID = "learned-loss-browser-probe"
_PROBE = """<script>
addEventListener("load", () => setTimeout(() => {
  const images = [...document.images].map((img) => ({
    alt: img.alt, src: (img.getAttribute("src") || "").slice(0, 80),
    scheme: new URL(img.currentSrc || img.src || "about:blank", location.href).protocol,
    complete: img.complete, width: img.naturalWidth, height: img.naturalHeight}));
  const references = [];
  for (const el of document.querySelectorAll("[src],[href],[srcset],[poster],[action]")) {
    for (const name of ["src", "href", "srcset", "poster", "action"]) {
      const v = (el.getAttribute(name) || "").trim();
      if (el.hasAttribute(name) && !/^(data:|#)/i.test(v)) references.push(v.slice(0, 200));
    }
  }
  const resources = performance.getEntriesByType("resource").map((e) => e.name);
  const probe = document.createElement("pre");
  probe.id = "%s";
  probe.hidden = true;
  probe.textContent = btoa(JSON.stringify({images, references, resources}));
  document.body.appendChild(probe);
}, 1000));
</script>
""" % _PROBE_ID
# Attributes whose value is a URL the browser may load or follow.
_URL_ATTRS = ("src", "href", "srcset", "poster", "data", "action", "formaction", "background",
              "xlink:href", "manifest")
_SRCSET_URL = re.compile(r"[\s,]*(\S+)")
_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]*)|@import\s+['"]([^'"]*)""", re.IGNORECASE)


class BrowserError(errors.UserError):
    """Chromium is missing, or it did not render the page."""


@dataclasses.dataclass
class Rendering:
    images: list[dict]  # per <img>: alt, src (first 80 chars), scheme, complete, width, height
    references: list[str]  # src/href/... values in the DOM after load that are not data: or #
    resources: list[str]  # URLs the page fetched (performance resource entries)
    screenshot: str | None  # path of the PNG, when one was asked for


def find_chromium() -> str:
    """Path of the Chromium binary: $CHROMIUM, else the first of BINARIES on PATH."""
    named = os.environ.get("CHROMIUM")
    found = shutil.which(named) if named else next(filter(None, map(shutil.which, BINARIES)),
                                                     None)
    if not found:
        raise BrowserError(
            f"no Chromium binary ({named or ' or '.join(BINARIES)}) found on PATH; install it "
            "with `apt-get install -y --no-install-recommends chromium` (`make test` does)")
    return found


def _offline_flags(profile: str) -> list[str]:
    return [
        "--headless", "--no-sandbox",  # the sandbox cannot start as root in a container
        "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
        "--force-device-scale-factor=1",  # a screenshot of exactly the window size
        f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions",
        # No network: every request goes to a closed port and no host name resolves.
        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ]


def render(path: str, screenshot: str | None = None, window: tuple[int, int] = WINDOW,
           timeout: float = 120.0) -> Rendering:
    """Loads the HTML file `path` offline in headless Chromium; writes a PNG of the window to
    `screenshot` when given. Raises BrowserError when Chromium fails or the probe is missing."""
    binary = find_chromium()
    with open(path, encoding="utf-8") as f:
        page = f.read()
    with tempfile.TemporaryDirectory(prefix="learned_loss_browser_") as tmp:
        probe_path = os.path.join(tmp, "page.html")
        with open(probe_path, "w", encoding="utf-8") as f:
            f.write(page + _PROBE)
        command = [binary, *_offline_flags(os.path.join(tmp, "profile")),
                   f"--window-size={window[0]},{window[1]}",
                   # Virtual time stands still while a request is pending, so the probe
                   # (1 s after load) sees requests the page made as it loaded, then the
                   # page is dumped when the 5 s budget runs out.
                   "--virtual-time-budget=5000",
                   "--dump-dom"]
        if screenshot:
            command.append(f"--screenshot={os.path.abspath(screenshot)}")
        try:
            out = subprocess.run(command + ["file://" + probe_path], capture_output=True,
                                 text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise BrowserError(f"{binary} did not finish {path} in {timeout:.0f} s") from e
    match = re.search(rf'id="{_PROBE_ID}"[^>]*>([A-Za-z0-9+/=]*)<', out.stdout)
    if out.returncode != 0 or not match:
        raise BrowserError(f"{binary} exited {out.returncode} without the probe's record of "
                           f"{path}; stderr ends:\n{out.stderr[-2000:]}")
    if screenshot and not os.path.exists(screenshot):
        raise BrowserError(f"{binary} wrote no screenshot {screenshot}; stderr ends:\n"
                           f"{out.stderr[-2000:]}")
    record = json.loads(base64.b64decode(match.group(1)))
    return Rendering(record["images"], record["references"], record["resources"], screenshot)


def _is_inline(url: str) -> bool:
    return url.strip().lower().startswith(("data:", "#"))


def _srcset_urls(srcset: str) -> list[str]:
    """The URLs of a srcset (HTML's parsing rule): skip whitespace and commas, take the run of
    non-whitespace (a data: URI may hold commas); trailing commas end the candidate, otherwise
    descriptors run to the next comma."""
    urls, pos = [], 0
    while match := _SRCSET_URL.match(srcset, pos):
        url, pos = match.group(1), match.end()
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            comma = srcset.find(",", pos)
            pos = len(srcset) if comma < 0 else comma
        if url:
            urls.append(url)
    return urls


class _References(html.parser.HTMLParser):
    """Collects URL-valued attributes and CSS url()/@import targets that are not inline."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []
        self._in_style = False

    def _css(self, text: str, where: str) -> None:
        for match in _CSS_URL.finditer(text):
            url = match.group(1) if match.group(1) is not None else match.group(2)
            if not _is_inline(url):
                self.found.append(f"{where}: {url[:200]}")

    def handle_starttag(self, tag, attrs):
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in _URL_ATTRS and value is not None:
                urls = _srcset_urls(value) if name == "srcset" else [value]
                self.found += [f"<{tag} {name}={u[:200]}>" for u in urls if not _is_inline(u)]
            elif name == "style" and value:
                self._css(value, f"<{tag} style>")

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self._css(data, "<style>")


def external_references(page: str) -> list[str]:
    """Every src/href-like attribute, CSS url() and @import in the HTML text `page` that is not
    a data: URI or a #fragment (a remote, protocol-relative or file reference)."""
    parser = _References()
    parser.feed(page)
    parser.close()
    return parser.found


def problems(path: str, rendering: Rendering | None = None) -> list[str]:
    """Why the HTML file `path` is not a self-contained page whose images all decode: its
    external references, then what Chromium saw (renders it when `rendering` is None)."""
    with open(path, encoding="utf-8") as f:
        out = [f"the HTML refers to {r}" for r in external_references(f.read())]
    rendering = rendering or render(path)
    for img in rendering.images:
        name = f"<img alt={img['alt']!r} src={img['src']!r}>"
        if img["scheme"] != "data:":
            out.append(f"{name} is loaded from {img['scheme']}, not a data: URI")
        if not img["complete"] or not img["width"] or not img["height"]:
            out.append(f"{name} does not decode (complete {img['complete']}, "
                       f"{img['width']}x{img['height']})")
    out += [f"the page refers to {r} after load" for r in rendering.references]
    out += [f"the page fetched {r}" for r in rendering.resources]
    return out
