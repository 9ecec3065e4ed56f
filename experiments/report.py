"""Writes WORKDIR/report.md and a self-contained report.html from a workdir alone.

  python -m experiments.report --workdir=W      # a compare run (experiments/compare_objectives)
  python -m experiments.report --workdir=ROOT   # a sweep (experiments/sweep): one table per
                                                # swept hyper-parameter

Nothing is trained or scored again; the same workdir gives byte-identical files.
"""

from __future__ import annotations

import os

from absl import flags, logging

from learned_loss import cli, report, sweep

_WORKDIR = flags.DEFINE_string("workdir", None, "A compare workdir or a sweep root.")


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]}")
    if not _WORKDIR.value or not os.path.isdir(_WORKDIR.value):
        raise cli.UserError(f"--workdir must be an existing folder, got {_WORKDIR.value!r}")
    if os.path.exists(os.path.join(_WORKDIR.value, sweep.SWEEP_FILE)):
        paths = report.write_sweep(_WORKDIR.value)
    else:
        paths = report.write(_WORKDIR.value)
    logging.info("wrote %s and %s", paths["markdown"], paths["html"])


if __name__ == "__main__":
    cli.run(main, user_errors=(report.ReportError,))
