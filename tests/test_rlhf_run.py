"""experiments.rlhf end to end on the 8-device mesh: SFT -> preference pairs from the policy's
samples -> reward model -> PPO and DPO -> over-optimization analysis; resume and determinism."""

import json
import os

import pytest

from configs import rlhf as rlhf_config
from learned_loss import rlhf_pipeline as rlhf
from learned_loss import cli, policy
from tests import runs

ALGORITHMS = ("ppo", "dpo")


def _config(sft_workdir: str, data_dir: str):
    config = rlhf_config.get_config("smoke")
    config.sft_from = sft_workdir
    config.data.data_dir = data_dir
    config.algorithms = ALGORITHMS
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(workdir, result, config) of a finished smoke run from a smoke SFT policy."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    sft = str(tmp_path_factory.mktemp("sft"))
    done = runs.run("experiments.finetune", sft, "configs/finetune.py:smoke",
                    f"--config.data.data_dir={data_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    workdir = str(tmp_path_factory.mktemp("rlhf"))
    config = _config(sft, data_dir)
    return workdir, rlhf.run(config, workdir), config


def _metrics(path):
    with open(os.path.join(path, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_every_stage_writes_its_workdir(finished):
    workdir, result, config = finished
    prefs = json.load(open(os.path.join(workdir, "preferences.json"), encoding="utf-8"))
    assert prefs["splits"]["train"]["pairs"] > 0
    assert prefs["dataset"]["policy_hash"]  # Built from the SFT policy's samples.
    rm = _metrics(os.path.join(workdir, "reward_model"))
    assert rm[-1]["step"] == config.reward_model.train.num_steps
    assert {"accuracy", "margin", "valid/accuracy"} <= set(rm[-1])
    for algorithm in ALGORITHMS:
        records = _metrics(os.path.join(workdir, algorithm))
        steps = config.get("rl" if algorithm != "dpo" else "dpo").train.num_steps
        assert [r["step"] for r in records] == list(range(1, steps + 1))
        last = records[-1]
        for key in ("valid/proxy", "valid/gold_graded", "valid/gold_exact_match", "valid/kl",
                    "valid/length", "valid/exact_match"):
            assert key in last, (algorithm, key)
        if algorithm != "dpo":  # The on-policy runs log their rollouts at every step.
            for r in records:
                assert {"proxy_reward", "gold_graded", "gold_exact_match", "kl",
                        "length"} <= set(r)
        # Each stage is a training workdir that policy.load reads back.
        loaded = policy.load(os.path.join(workdir, algorithm))
        assert loaded.step == steps
        assert loaded.config.model.scalar_head == (algorithm == "ppo")


def test_overoptimization_report(finished):
    workdir, result, config = finished
    saved = json.load(open(os.path.join(workdir, "overoptimization.json"), encoding="utf-8"))
    bon = saved["best_of_n"]
    assert bon["n"] == [1, 2, 4, 8, 16] and bon["d"][0] == 0.0
    assert bon["proxy"] == sorted(bon["proxy"])  # Best-of-n by proxy never lowers the proxy.
    assert {"alpha", "beta", "r2"} <= set(bon["fit_proxy"])
    for algorithm in ALGORITHMS:
        curve = saved["rl"][algorithm]
        assert curve["step"][0] == 0 and curve["kl"][0] == 0.0
        assert curve["gold"][0] == saved["sft"]["valid/gold_graded"]
        assert len(curve["d"]) == 1 + config.get(
            "rl" if algorithm != "dpo" else "dpo").train.num_steps // config.rl.train.eval_every
        assert "fit_gold" in curve and "inverted_u" in curve
        assert 0.0 <= saved["length"][algorithm]["mean_length_after"]


def test_rerun_resumes_and_reproduces(finished):
    """A second run finds every stage finished: no new steps, the same analysis."""
    workdir, result, config = finished
    before = {a: _metrics(os.path.join(workdir, a)) for a in ALGORITHMS}
    again = rlhf.run(config, workdir)
    for algorithm in ALGORITHMS:
        assert _metrics(os.path.join(workdir, algorithm)) == before[algorithm]
    def analysis(r):  # As JSON text: NaN (an empty length bucket) compares equal to itself.
        return json.dumps({k: v for k, v in r.items() if k not in ("wall_time_s", "final")},
                          sort_keys=True)

    assert analysis(again) == analysis(result)


def test_bad_inputs_are_user_errors(finished, tmp_path):
    workdir, _, config = finished
    bad = _config(config.sft_from, config.data.data_dir)
    bad.algorithms = ("ppo", "a2c")
    with pytest.raises(cli.UserError, match="unknown algorithms"):
        rlhf.run(bad, str(tmp_path / "a"))
    missing = _config("", config.data.data_dir)
    with pytest.raises(cli.UserError, match="sft_from is required"):
        rlhf.run(missing, str(tmp_path / "b"))
    result = runs.run("experiments.rlhf", tmp_path / "c", "configs/rlhf.py:smoke",
                      f"--config.sft_from={tmp_path / 'nothing'}")
    assert result.returncode != 0
    assert "provenance.json" in result.stderr and "Traceback" not in result.stderr
