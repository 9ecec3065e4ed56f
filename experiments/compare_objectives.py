"""The main job: compare objectives end to end and write the report
(learned_loss/studies/compare.py).

  python -m experiments.compare_objectives --config=configs/compare.py:tiny --workdir=/tmp/cmp

Refuses an evaluation family with a meta role in any arm, pre-trains (or reuses the cached
pre-training of the same config, code and corpus), meta-trains the learned objectives the grid
needs on their own families, fine-tunes every objective x noise kind x seed from the
pre-trained model with the same budget and each seed's own data, scores each on the test
inputs of the evaluation families, and writes WORKDIR/report.md, WORKDIR/report.html and
WORKDIR/findings.json. A re-run with the same workdir resumes: finished cells, meta-training
runs and the cached pre-training are kept.
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from learned_loss.core import cli, distributed, pretraining
from learned_loss.studies import compare

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/compare.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the cells, meta-training runs and the "
                               "report go.")


def main(argv):
    config = _CONFIG.value
    cli.check_run_flags(argv, config, _WORKDIR.value, "configs/compare.py:tiny")
    distributed.initialize()
    paths = compare.run(config, _WORKDIR.value, pretraining.run)
    logging.info("wrote %s and %s", paths["markdown"], paths["html"])


if __name__ == "__main__":
    cli.run(main)
