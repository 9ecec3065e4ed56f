"""Emergence and the metric (learned_loss/studies/emergence.py).

  python -m experiments.emergence --config=configs/emergence.py:tiny --workdir=/tmp/emergence

Trains each model size on tasks with answers of several lengths L, scores exact match and
per-token accuracy at several checkpoints, compares exact match with p^L, and writes
WORKDIR/emergence.json and the report (WORKDIR/report.md, .html). A re-run resumes size by size.
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from learned_loss.core import cli, distributed
from learned_loss.report import render as report
from learned_loss.studies import emergence

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "Config file (configs/emergence.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the evaluations, emergence.json and the "
                               "report go.")


def main(argv):
    config = _CONFIG.value
    cli.check_run_flags(argv, config, _WORKDIR.value, "configs/emergence.py:tiny")
    distributed.initialize()
    emergence.run(config, _WORKDIR.value, log=logging.info)
    paths = report.write(_WORKDIR.value)
    logging.info("wrote %s and %s", paths["markdown"], paths["html"])


if __name__ == "__main__":
    cli.run(main)
