"""RLHF baselines from an SFT policy, and reward over-optimization.

  python -m experiments.rlhf --config=configs/rlhf.py:easy --workdir=/tmp/rlhf \
      --config.sft_from=/tmp/sft [--config.algorithms=ppo,dpo]

Stages (`learned_loss.rlhf.pipeline`), each in the workdir and resumed on a re-run:
preferences.json (pairs from the SFT policy's samples), reward_model/, one training workdir per
algorithm (ppo/, rloo/, grpo/, dpo/), and overoptimization.json (best-of-n and RL gold and proxy
against sqrt(KL), with the fits of Gao et al. 2022, and the length analysis).
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from learned_loss.core import cli, distributed
from learned_loss.rlhf import pipeline as rlhf_pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/rlhf.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where every stage's outputs go.")


def main(argv):
    config = _CONFIG.value
    cli.check_run_flags(argv, config, _WORKDIR.value, "configs/rlhf.py:easy")
    distributed.initialize()
    result = rlhf_pipeline.run(config, _WORKDIR.value)
    for name, curve in result["rl"].items():
        logging.info("%s: gold %s -> %s, proxy %s -> %s, KL %.3f, length %.1f -> %.1f", name,
                     f"{curve['gold'][0]:.3f}", f"{curve['gold'][-1]:.3f}",
                     f"{curve['proxy'][0]:.3f}", f"{curve['proxy'][-1]:.3f}", curve["kl"][-1],
                     curve["length"][0], curve["length"][-1])


if __name__ == "__main__":
    cli.run(main)
