"""Scaling laws of MLE and of a learned token loss (learned_loss/studies/scaling.py).

  python -m experiments.scaling --config=configs/scaling.py:tiny --workdir=/tmp/scaling

Meta-trains the learned token loss on the text corpus (unless --config.artifacts.learned names
an artifact), pre-trains every model size for every token budget under each objective, fits
Kaplan's L(N) and Chinchilla's L(N, D) per objective with bootstrap intervals and an
extrapolation check, and writes WORKDIR/scaling.json and the report (WORKDIR/report.md, .html).
A re-run with the same workdir resumes: finished runs are kept.
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from learned_loss.core import cli, distributed
from learned_loss.report import render as report
from learned_loss.studies import scaling

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/scaling.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs, scaling.json and the report go.")


def main(argv):
    config = _CONFIG.value
    cli.check_run_flags(argv, config, _WORKDIR.value, "configs/scaling.py:tiny")
    distributed.initialize()
    scaling.run(config, _WORKDIR.value, log=logging.info)
    paths = report.write(_WORKDIR.value)
    logging.info("wrote %s and %s", paths["markdown"], paths["html"])


if __name__ == "__main__":
    cli.run(main)
