"""MLE pre-training of the Transformer LM on a local text corpus.

  python -m experiments.pretrain --config=configs/pretrain.py:tiny --workdir=/tmp/pretrain

Any config field can be overridden (`--config.optimizer.lr=3e-4`); re-running with the same
workdir resumes from its newest good checkpoint. Multi-host: add `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` on every host (or the LEARNED_LOSS_* environment variables).

Writes into the workdir: metrics.jsonl, tensorboard/, provenance.json, checkpoints/. The run
itself (mesh, data, model, state, checkpoints, loop) is `learned_loss.core.pretraining.run`.
"""

from __future__ import annotations

import time

from absl import flags, logging
from ml_collections import config_flags

from learned_loss.core import cli, distributed, pretraining

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/pretrain.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and logs go.")


def main(argv):
    config = _CONFIG.value
    cli.check_run_flags(argv, config, _WORKDIR.value, "configs/pretrain.py:tiny")
    distributed.initialize()
    start = time.time()
    last = pretraining.run(config, _WORKDIR.value)
    logging.info("done in %.1fs: %s", time.time() - start, last)


if __name__ == "__main__":
    cli.run(main)
