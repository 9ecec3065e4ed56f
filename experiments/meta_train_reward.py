"""Meta-trains a learned reward r_theta: RL on it should score well under the gold metric.

  python -m experiments.finetune --config=configs/finetune.py:words --workdir=/tmp/sft
  python -m experiments.meta_train_reward --config=configs/meta_train_reward.py:tiny \
      --workdir=/tmp/meta_reward --config.rlhf.sft_from=/tmp/sft

Writes WORKDIR/rlhf (the RLHF pipeline's preference pairs and reward model, or reuses
--config.rlhf_workdir), outer checkpoints, metrics.jsonl, final.json (gold, proxy and length of
the policy trained on r_theta against the one trained on the reward model) and, at the end,
WORKDIR/artifact, which `experiments.rlhf --config.rl.reward=learned
--config.rl.learned_reward_path=WORKDIR/artifact` optimises. Re-running with the same workdir
resumes. See learned_loss/meta/reward_run.py.
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from learned_loss.core import cli, distributed
from learned_loss.meta import reward_run

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "Config file (configs/meta_train_reward.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the stages, checkpoints, metrics and "
                               "the artifact go.")


def main(argv):
    config = _CONFIG.value
    cli.check_run_flags(argv, config, _WORKDIR.value, "configs/meta_train_reward.py:tiny")
    distributed.initialize()
    final = reward_run.run(config, _WORKDIR.value)
    if final:
        ours, rm = final["learned_reward"], final["reward_model"]
        logging.info("gold %.3f (r_theta) vs %.3f (reward model), proxy %.3f vs %.3f, length "
                     "%.2f vs %.2f, %.0fs", ours["gold_graded"], rm["gold_graded"],
                     ours["proxy"], rm["proxy"], ours["length"], rm["length"],
                     final["wall_time_s"])


if __name__ == "__main__":
    cli.run(main)
