"""experiments.rlhf end to end, from an SFT policy with headroom
(configs/finetune.py:words, one easy family): preference pairs from the policy's samples ->
reward model -> PPO and DPO -> over-optimization analysis. The reward model orders clean pairs
mostly as the gold scores do, a short PPO run raises the proxy reward, and a re-run resumes
every finished stage and reproduces the analysis. (One device: the steps themselves run on the
8-device mesh in tests/test_rlhf.py.)

The two thresholds on training results were measured here over the seeds 0, 1 and 2
(`--config.seed=S` for the SFT policy and the pipeline; another CPU's rounding re-rolls a run
as another seed does): the reward model's gold accuracy was 0.889, 1.000 and 0.792, and PPO's
proxy rose by at least 0.239, 0.345 and 0.257 over the SFT policy's. The gold score of PPO's
samples rose on two seeds (+0.051, +0.133) and fell on the third (0.700 -> 0.457), so no test
asserts its direction."""

import json
import os

import numpy as np
import pytest

from learned_loss.core import provenance
from tests import runs

ALGORITHMS = ("ppo", "dpo")
PPO_STEPS, DPO_STEPS, EVAL_EVERY = 20, 10, 10
RM_STEPS = 200
OVERRIDES = ("--config.algorithms=ppo,dpo", "--config.preferences.tau=0.02",
             "--config.preferences.pairs_per_family=400",
             f"--config.reward_model.train.num_steps={RM_STEPS}",
             f"--config.reward_model.train.eval_every={RM_STEPS}",
             f"--config.rl.train.num_steps={PPO_STEPS}",
             f"--config.rl.train.eval_every={EVAL_EVERY}",
             f"--config.dpo.train.num_steps={DPO_STEPS}",
             f"--config.dpo.train.eval_every={EVAL_EVERY}",
             "--config.eval.prompts_per_family=48",
             "--config.best_of_n.prompts_per_family=4", "--config.best_of_n.samples=64")


def _rlhf(workdir, sft, data_dir):
    return runs.run("experiments.rlhf", workdir, "configs/rlhf.py:words",
                    f"--config.sft_from={sft}", f"--config.data.data_dir={data_dir}",
                    *OVERRIDES, timeout=900)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(workdir, sft workdir, data_dir) of a finished run."""
    data_dir = tmp_path_factory.mktemp("tfds")
    sft = tmp_path_factory.mktemp("sft")
    done = runs.run("experiments.finetune", sft, "configs/finetune.py:words",
                    f"--config.data.data_dir={data_dir}", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    workdir = tmp_path_factory.mktemp("rlhf")
    done = _rlhf(workdir, sft, data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, sft, data_dir


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_reward_model_orders_clean_pairs_like_the_gold_scores(finished):
    workdir, _, _ = finished
    prefs = _json(workdir / "preferences.json")
    assert prefs["dataset"]["policy_hash"]  # Built from the SFT policy's own samples.
    assert prefs["splits"]["train"]["pairs_with_policy"] > 0
    final = runs.metrics(workdir / "reward_model")[-1]
    assert final["step"] == RM_STEPS
    # 0.79 to 1.00 over three seeds (module docstring): 0.65 keeps a margin of 0.14 below the
    # lowest, well above the 0.5 of a reward model that ignores the answers.
    assert final["valid/gold_accuracy"] >= 0.65, final


def test_short_ppo_raises_the_proxy_reward(finished):
    workdir, _, _ = finished
    curve = _json(workdir / "overoptimization.json")["rl"]["ppo"]
    assert curve["step"] == [0, 10, 20]
    # d = 0 is the SFT policy; both later evaluations beat it on the proxy. The smallest rise
    # over three seeds was 0.239 (module docstring): 0.1 keeps a margin of 0.139.
    assert min(curve["proxy"][1:]) > curve["proxy"][0] + 0.1, curve


def test_every_run_logs_proxy_gold_kl_and_length(finished):
    workdir, _, _ = finished
    for algorithm, steps in (("ppo", PPO_STEPS), ("dpo", DPO_STEPS)):
        records = runs.metrics(workdir / algorithm)
        assert [r["step"] for r in records if "valid/kl" in r] == list(
            range(EVAL_EVERY, steps + 1, EVAL_EVERY))
        for key in ("valid/proxy", "valid/gold_graded", "valid/gold_exact_match", "valid/kl",
                    "valid/length", "valid/exact_match"):
            assert key in records[-1], (algorithm, key)
        config = provenance.read(str(workdir / algorithm))[-1]["config"]
        assert config["model"]["scalar_head"] == (algorithm == "ppo")
    for record in runs.metrics(workdir / "ppo"):  # Every step's own rollouts.
        assert {"proxy_reward", "gold_graded", "gold_exact_match", "kl", "length",
                "clip_fraction", "value_loss"} <= set(record)


def test_overoptimization_report(finished):
    workdir, _, _ = finished
    saved = _json(workdir / "overoptimization.json")
    bon = saved["best_of_n"]
    assert bon["n"] == [1, 2, 4, 8, 16, 32, 64] and bon["d"][0] == 0.0
    # Best-of-n by proxy never lowers the proxy (up to rounding where it has saturated).
    assert np.all(np.diff(bon["proxy"]) >= -1e-9), bon["proxy"]
    assert bon["fit_gold"]["n_points"] == 7 and 0.0 <= bon["fit_proxy"]["r2"] <= 1.0
    for algorithm in ALGORITHMS:
        curve = saved["rl"][algorithm]
        assert curve["gold"][0] == saved["sft"]["valid/gold_graded"] and curve["kl"][0] == 0.0
        # Three points (d = 0 and two evaluations) fit R_RL; DPO's two cannot, and say so.
        expected = {"alpha", "beta", "r2"} if algorithm == "ppo" else {"error"}
        assert expected <= set(curve["fit_gold"]), curve["fit_gold"]
        assert saved["length"][algorithm]["mean_length_before"] == saved["sft"]["valid/length"]


def test_rerun_resumes_and_reproduces(finished):
    """A second run finds every stage finished: no new steps, the same analysis."""
    workdir, sft, data_dir = finished
    before = {a: runs.metrics(workdir / a) for a in ALGORITHMS + ("reward_model",)}
    first = _json(workdir / "overoptimization.json")
    done = _rlhf(workdir, sft, data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    for name, records in before.items():
        assert runs.metrics(workdir / name) == records
    again = _json(workdir / "overoptimization.json")
    for key in ("sft", "best_of_n", "rl", "length"):
        assert json.dumps(again[key], sort_keys=True) == json.dumps(first[key], sort_keys=True)


def test_a_run_reuses_the_shared_pairs_and_reward_model(finished, tmp_path):
    """Another run from the same SFT policy, seed and settings, with shared_dir at the first
    run's workdir: no reward-model step is taken again, its DPO matches the first run's, and
    best-of-n is skipped. Other labeler settings with the same shared_dir are refused."""
    workdir, sft, data_dir = finished
    reward_before = runs.metrics(workdir / "reward_model")
    second = tmp_path / "second"
    done = runs.run("experiments.rlhf", second, "configs/rlhf.py:words",
                    f"--config.sft_from={sft}", f"--config.data.data_dir={data_dir}",
                    *OVERRIDES, "--config.algorithms=dpo", f"--config.shared_dir={workdir}",
                    "--config.best_of_n.samples=0", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert runs.metrics(workdir / "reward_model") == reward_before
    assert not (second / "reward_model").exists() and not (second / "preferences.json").exists()
    saved = _json(second / "overoptimization.json")
    assert saved["best_of_n"] is None
    assert saved["seconds"]["shared"] == _json(workdir / "stages.json")["seconds"] > 0
    first = _json(workdir / "overoptimization.json")
    assert runs.deterministic([saved["final"]["dpo"]]) == runs.deterministic(
        [first["final"]["dpo"]])
    assert saved["rl"]["dpo"] == first["rl"]["dpo"]

    other = tmp_path / "other"
    refused = runs.run("experiments.rlhf", other, "configs/rlhf.py:words",
                       f"--config.sft_from={sft}", f"--config.data.data_dir={data_dir}",
                       *OVERRIDES, "--config.preferences.tau=0.5",
                       f"--config.shared_dir={workdir}", timeout=900)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "computed with other settings" in refused.stderr and str(workdir) in refused.stderr
    assert not (other / "overoptimization.json").exists()
    assert not (other / "ppo").exists() and runs.metrics(workdir / "reward_model") == reward_before


def test_bad_inputs_are_user_errors(tmp_path):
    result = runs.run("experiments.rlhf", tmp_path / "a", "configs/rlhf.py:smoke",
                      f"--config.sft_from={tmp_path / 'nothing'}")
    assert result.returncode != 0
    assert "provenance.json" in result.stderr and "Traceback" not in result.stderr
    result = runs.run("experiments.rlhf", tmp_path / "b", "configs/rlhf.py:smoke",
                      "--config.algorithms=ppo,a2c")
    assert result.returncode != 0
    assert "unknown algorithms ['a2c']" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "b" / "overoptimization.json")
