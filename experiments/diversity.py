"""Task diversity at a fixed budget (learned_loss/studies/diversity.py), after Chung et al. 2022.

  python -m experiments.diversity --config=configs/diversity.py:tiny --workdir=/tmp/div

Fine-tunes the cached pre-trained model on 1, 3, 10, 30 and all meta-train families with the
same budget, over seeds, scores held-out families, and writes WORKDIR/diversity.json and the
report (WORKDIR/report.md, .html). A re-run with the same workdir resumes cell by cell.
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from learned_loss.core import cli, distributed, pretraining
from learned_loss.report import render as report
from learned_loss.studies import diversity

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "Config file (configs/diversity.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the cells, diversity.json and the "
                               "report go.")


def main(argv):
    config = _CONFIG.value
    cli.check_run_flags(argv, config, _WORKDIR.value, "configs/diversity.py:tiny")
    distributed.initialize()
    diversity.run(config, _WORKDIR.value, pretraining.run, log=logging.info)
    paths = report.write(_WORKDIR.value)
    logging.info("wrote %s and %s", paths["markdown"], paths["html"])


if __name__ == "__main__":
    cli.run(main)
