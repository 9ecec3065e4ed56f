"""Writes WORKDIR/report.md and a self-contained report.html from a workdir alone.

  python -m experiments.report --workdir=W      # a compare run (experiments/compare_objectives)
  python -m experiments.report --workdir=ROOT   # a sweep (experiments/sweep): one table per
                                                # swept hyper-parameter
  python -m experiments.report --workdir=W --screenshot   # also W/report.png (headless Chromium)

With --screenshot the page is opened offline in Chromium (tools/browser.py), the window
is kept as WORKDIR/report.png, and an image that does not decode or a reference outside the
page is logged as a warning.

Nothing is trained or scored again; the same workdir gives byte-identical files.
"""

from __future__ import annotations

import os

from absl import flags, logging

from learned_loss.core import cli, files
from learned_loss.report import render as report
from learned_loss.studies import sweep
from tools import browser

_WORKDIR = flags.DEFINE_string("workdir", None, "A compare workdir or a sweep root.")
_SCREENSHOT = flags.DEFINE_bool("screenshot", False, "Also open report.html in headless "
                                "Chromium, keep WORKDIR/report.png and log what is not inline.")
SCREENSHOT = "report.png"


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]}")
    if not _WORKDIR.value or not files.isdir(_WORKDIR.value):
        raise cli.UserError(f"--workdir must be an existing folder, got {_WORKDIR.value!r}")
    if _SCREENSHOT.value:  # Chromium opens a local file.
        files.local_only(_WORKDIR.value, "--workdir with --screenshot")
    if files.exists(os.path.join(_WORKDIR.value, sweep.SWEEP_FILE)):
        paths = report.write_sweep(_WORKDIR.value)
    else:
        paths = report.write(_WORKDIR.value)
    logging.info("wrote %s and %s", paths["markdown"], paths["html"])
    if _SCREENSHOT.value:
        png = os.path.join(_WORKDIR.value, SCREENSHOT)
        rendering = browser.render(paths["html"], screenshot=png)
        for problem in browser.problems(paths["html"], rendering):
            logging.warning("report.html: %s", problem)
        logging.info("wrote %s (%d images)", png, len(rendering.images))


if __name__ == "__main__":
    cli.run(main)
