"""RLHF learns: on one easy family, from an SFT policy with headroom (configs/finetune.py:words),
the reward model orders clean preference pairs as the gold scores do, and a short PPO run raises
both the proxy reward and the gold score of the policy's samples."""

import json

import pytest

from tests import runs

PPO_STEPS = 20


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    sft = tmp_path_factory.mktemp("sft")
    done = runs.run("experiments.finetune", sft, "configs/finetune.py:words",
                    f"--config.data.data_dir={data_dir}", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    workdir = tmp_path_factory.mktemp("rlhf")
    done = runs.run("experiments.rlhf", workdir, "configs/rlhf.py:words",
                    f"--config.sft_from={sft}", f"--config.data.data_dir={data_dir}",
                    "--config.algorithms=ppo", "--config.preferences.tau=0.02",
                    "--config.preferences.pairs_per_family=400",
                    "--config.reward_model.train.num_steps=200",
                    "--config.reward_model.train.eval_every=200",
                    f"--config.rl.train.num_steps={PPO_STEPS}", "--config.rl.train.eval_every=10",
                    "--config.best_of_n.prompts_per_family=4", "--config.best_of_n.samples=64",
                    timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def test_reward_model_orders_clean_pairs_like_the_gold_scores(run):
    final = runs.metrics(run / "reward_model")[-1]
    assert final["valid/gold_accuracy"] >= 0.85, final


def test_short_ppo_raises_proxy_and_gold(run):
    with open(run / "overoptimization.json", encoding="utf-8") as f:
        curve = json.load(f)["rl"]["ppo"]
    assert curve["step"] == [0, 10, 20]
    # d = 0 is the SFT policy; both later evaluations beat it on the proxy, and the gold score
    # of the policy's samples rises too.
    assert min(curve["proxy"][1:]) > curve["proxy"][0] + 0.1, curve
    assert max(curve["gold"][1:]) > curve["gold"][0] + 0.03, curve
