"""Meta-trains a learned token loss (offline) or trains a model with online meta-weighting; with
configs/meta_preference.py, meta-trains a learned preference loss (offline).

  python -m experiments.meta_train --config=configs/meta_train.py:tiny --workdir=/tmp/meta
  python -m experiments.meta_train --config=configs/meta_train.py:tiny --workdir=/tmp/online \
      --config.mode=online
  python -m experiments.finetune --config=configs/finetune.py:tiny \
      --config.objective=learned_token_loss --config.objective.path=/tmp/meta/artifact
  python -m experiments.meta_train --config=configs/meta_preference.py:tiny --workdir=/tmp/mpref
  python -m experiments.rlhf --config=configs/rlhf.py:easy --workdir=/tmp/rlhf \
      --config.sft_from=/tmp/sft --config.dpo.loss_type=learned \
      --config.dpo.learned_path=/tmp/mpref/artifact

`--config.estimator.name` picks the meta-gradient estimator (tbptt, es, pes, full_es). Re-running
with the same workdir resumes from the newest outer checkpoint; the artifact is written when the
run finishes. See learned_loss/meta/run.py for the workdir's contents and the metrics, and
learned_loss/meta/preference_run.py for the preference loss's (config.objective.name picks).
"""

from __future__ import annotations

import time

from absl import flags, logging
from ml_collections import config_flags

from learned_loss.core import cli, distributed
from learned_loss.meta import preference_run
from learned_loss.meta import run as meta_run

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "Config file (configs/meta_train.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the artifact go.")


def main(argv):
    config = _CONFIG.value
    cli.check_run_flags(argv, config, _WORKDIR.value, "configs/meta_train.py:tiny")
    distributed.initialize()
    start = time.time()
    if config.objective.name == preference_run.NAME:
        last = preference_run.run(config, _WORKDIR.value)
    else:
        last = meta_run.run(config, _WORKDIR.value)
    logging.info("done in %.1fs: %s", time.time() - start, last)


if __name__ == "__main__":
    cli.run(main)
