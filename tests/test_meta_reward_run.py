"""experiments.meta_train_reward end to end (configs/meta_train_reward.py:smoke): the RLHF
pipeline's preference and reward-model stages, full-horizon ES over RLOO inner runs scored by the gold
metric, outer checkpoints, metrics, final.json and the `learned_reward` artifact; a run cut short
resumes to the same numbers, and a finished run started again leaves its artifact alone.

The SFT policy is a one-layer model saved as a fine-tuning workdir would be (untrained: the
smoke run checks the machinery, not what it learns), so that the test spends its time on the
meta-training run itself.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from configs import finetune as finetune_configs
from configs import meta_train_reward
from learned_loss.core import cli, provenance, train
from learned_loss.core import checkpoint as checkpoint_lib
from learned_loss.core import model as model_lib
from learned_loss.data import tokenizer
from learned_loss.meta import host_es, reward_run
from learned_loss.objectives import artifact, learned
from learned_loss.rlhf import pipeline as rlhf_pipeline
from tests import runs

STEPS = 2


def _digit_policy(params):
    """params of a model that writes short random numbers: the final norm's offset adds
    w[0] = (-30 off the digits, +1.2 on EOS) to every position's logits, beside the random
    init's context-dependent part. The count families' gold scorers give such numbers partial
    credit, so members of the population score differently, and a reward model (initialised
    from these params) reads features that vary with the sequence."""
    params = jax.tree.map(np.array, params)  # writable host copies
    norm = next(k for k in params if k.endswith("final_norm"))
    unembed = next(k for k in params if k.endswith("unembed"))
    params[norm]["offset"] = np.eye(1, params[norm]["offset"].size, dtype=np.float32)[0]
    w = params[unembed]["w"].copy()  # [D, V]
    w[0] = -30.0
    w[0, ord("0"):ord("9") + 1] = 0.0
    w[0, tokenizer.EOS] = 1.2
    params[unembed]["w"] = w
    return jax.tree.map(jnp.asarray, params)


def _sft_workdir(path) -> str:
    """A fine-tuning workdir (provenance.json and a checkpoint) of a small policy that writes
    short random numbers."""
    config = finetune_configs.get_config("smoke")
    model_cfg = model_lib.ModelConfig(vocab_size=260, d_model=16, num_layers=1, num_heads=2,
                                      d_ff=32, max_len=64, init_scale=0.3, tie_embeddings=False)
    config.model = ml_collections.ConfigDict(dataclasses.asdict(model_cfg))
    model = model_lib.build(model_cfg)
    optimizer = train.make_optimizer(config.optimizer, config.train.num_steps)
    state = jax.jit(lambda key: train.init_state(model, optimizer, key, config.data.seq_len))(
        jax.random.key(0))
    state = state._replace(params=_digit_policy(state.params))
    ckpt = checkpoint_lib.Checkpointer(str(path), async_save=False)
    ckpt.save(1, state, {"model": config.model.to_dict()})
    ckpt.close()
    provenance.write(str(path), provenance.collect(config))
    return str(path)


def _run(workdir, sft, data_dir, *overrides):
    return runs.run("experiments.meta_train_reward", workdir, "configs/meta_train_reward.py:smoke",
                    f"--config.rlhf.sft_from={sft}", f"--config.rlhf.data.data_dir={data_dir}",
                    *overrides, timeout=600)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(workdir, sft, data_dir) of a finished smoke run of STEPS outer steps."""
    data_dir = tmp_path_factory.mktemp("tfds")
    sft = _sft_workdir(tmp_path_factory.mktemp("sft"))
    workdir = tmp_path_factory.mktemp("meta_reward")
    done = _run(workdir, sft, data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, sft, data_dir


def _outer_state(workdir, step: int, scratch, like):
    """The outer state (shaped like `like`) the run checkpointed after outer step `step`: the
    newest of a copy of its checkpoints up to that step."""
    copy = scratch / f"outer_{step}"
    shutil.copytree(workdir / "checkpoints", copy / "checkpoints")
    for later in os.listdir(copy / "checkpoints"):
        if later.isdigit() and int(later) > step:
            shutil.rmtree(copy / "checkpoints" / later)
    config = meta_train_reward.get_config("smoke")
    model = {"objective": learned.REWARD_ARTIFACT, "hidden": int(config.reward.hidden),
             "strategy": config.estimator.strategy}  # What reward_run records with its states.
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    ckpt = checkpoint_lib.Checkpointer(str(copy), read_only=True)
    restored = ckpt.restore_latest(abstract, model_config=model)
    ckpt.close()
    assert restored.step == step
    return restored.state


def test_run_writes_metrics_final_comparison_and_a_loadable_artifact(finished, tmp_path):
    workdir, _, _ = finished
    records = runs.metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        assert record["diverged"] == 0.0 and np.isfinite(record["grad_norm"])
        assert 0.0 <= record["fitness/mean_gold"] <= record["fitness/best_gold"] <= 1.0
    # The last step's validation run under theta beside the same run on the reward model's
    # score (eval_every = STEPS).
    assert "valid/gold_graded" not in records[0]
    assert {"valid/gold_graded", "valid/length", "valid_rm/gold_graded",
            "valid_rm/proxy"} <= set(records[-1])
    with open(workdir / reward_run.FINAL, encoding="utf-8") as f:
        final = json.load(f)
    assert final["outer_steps"] == STEPS
    # The final comparison: final.runs runs of each reward; run 0 is the meta-validation run.
    config = meta_train_reward.get_config("smoke")
    n_runs = config.final.runs
    assert final["runs"] == n_runs == 2 and final["damping_factor"] == config.baseline.damping
    assert final["reward_model"]["runs"][0]["gold_graded"] == records[-1]["valid_rm/gold_graded"]
    assert final["learned_reward"]["runs"][0]["gold_graded"] == records[-1]["valid/gold_graded"]
    for name in ("learned_reward", "reward_model", "damping"):
        rs = final[name]
        assert len(rs["runs"]) == n_runs
        golds = [r["gold_graded"] for r in rs["runs"]]
        assert rs["gold_graded"] == pytest.approx(np.mean(golds))
        assert rs["gold_gain"] == pytest.approx(rs["gold_graded"] - final["sft"]["gold_graded"])
        assert rs["proxy_gain"] == pytest.approx(rs["proxy"] - final["sft"]["proxy"])
        assert rs["ci95"]["gold_graded"] >= 0.0
    # r_theta against each baseline, paired over the runs, the two Holm-adjusted together.
    tests = {t["name"]: t for t in final["tests"]}
    assert set(tests) == {"learned_reward - reward_model", "learned_reward - damping"}
    for other in ("reward_model", "damping"):
        t = tests[f"learned_reward - {other}"]
        diffs = [a["gold_graded"] - b["gold_graded"]
                 for a, b in zip(final["learned_reward"]["runs"], final[other]["runs"])]
        assert t["n"] == n_runs and t["mean"] == pytest.approx(np.mean(diffs))
    # Holm over the tests with a p-value (none when every paired difference is the same),
    # worked out: with two, the smaller p doubled and the larger no lower than that; with one,
    # its own p.
    finite = sorted((t for t in tests.values() if np.isfinite(t["p"])), key=lambda t: t["p"])
    if len(finite) == 2:
        low, high = finite
        assert low["p_adjusted"] == pytest.approx(min(1.0, 2 * low["p"]))
        assert high["p_adjusted"] == pytest.approx(max(low["p_adjusted"], high["p"]))
    for t in tests.values():
        expected = t["p"] if len(finite) == 1 else t["p_adjusted"]
        assert t["p_adjusted"] == pytest.approx(expected, nan_ok=True)
        assert np.isfinite(t["p_adjusted"]) == np.isfinite(t["p"])
    saved = artifact.load(str(workdir / "artifact"), expected_name=learned.REWARD_ARTIFACT)
    theta = learned.check_reward_theta(saved.theta)
    assert saved.settings["hidden"] == 4 and theta["w0"].shape == (3, 4)
    assert saved.config["outer"]["num_steps"] == STEPS
    # Each outer step is adam's on the ES estimate. host_es's estimate g_k is the strategy's
    # step negated, theta_{k-1} - m_k with m_k the strategy's mean after step k (checkpointed);
    # its norm is the logged grad_norm; adam (after clipping the global norm), worked out here,
    # takes theta_{k-1} to theta_k, the last of them the artifact.
    config = meta_train_reward.get_config("smoke")
    lr, clip = config.outer.lr, config.outer.grad_clip
    theta0 = learned.init_reward(jax.random.key(config.seed), hidden=config.reward.hidden)
    strategy = host_es.host_es(theta0, population=config.estimator.population,
                               strategy=config.estimator.strategy, sigma=config.estimator.sigma)
    start = host_es.init_state(strategy, reward_run.outer_optimizer(config.outer), theta0,
                               jax.random.key(config.seed))
    states = [start] + [_outer_state(workdir, k, tmp_path, start) for k in range(1, STEPS + 1)]
    flat = lambda tree: np.asarray(ravel_pytree(tree)[0], np.float64)  # [D]
    mu = nu = 0.0
    for k in range(1, STEPS + 1):
        before, after = flat(states[k - 1].theta), flat(states[k].theta)
        g = before - np.asarray(states[k].estimator.mean, np.float64)  # [D]
        np.testing.assert_allclose(np.linalg.norm(g), records[k - 1]["grad_norm"], rtol=1e-5)
        g = g * min(1.0, clip / np.linalg.norm(g))
        mu, nu = 0.9 * mu + 0.1 * g, 0.999 * nu + 0.001 * g ** 2
        step = lr * (mu / (1 - 0.9 ** k)) / (np.sqrt(nu / (1 - 0.999 ** k)) + 1e-8)
        np.testing.assert_allclose(after, before - step, rtol=1e-5, atol=1e-6)
        if k == 1:  # Adam's first step: lr against the sign of the estimate, every coordinate.
            np.testing.assert_allclose(after - before, -lr * np.sign(g), rtol=1e-4)
    np.testing.assert_array_equal(flat(theta), flat(states[-1].theta))
    # The RLHF pipeline's own stages were used and kept in the workdir.
    assert os.path.isdir(workdir / "rlhf" / "reward_model" / "checkpoints")
    config = meta_train_reward.get_config("smoke")
    config.rlhf.rl.reward = "learned"
    config.rlhf.rl.learned_reward_path = str(workdir / "artifact")
    loaded = rlhf_pipeline.reward_theta(config.rlhf)
    jax.tree.map(np.testing.assert_array_equal, loaded, theta)


def test_a_run_cut_short_resumes_to_the_same_numbers(finished, tmp_path):
    workdir, sft, data_dir = finished
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    # As if the run had stopped after outer step 1: no later checkpoint, no artifact.
    shutil.rmtree(copy / "artifact")
    shutil.rmtree(copy / "checkpoints" / str(STEPS))
    done = _run(copy, sft, data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert provenance.read(str(copy))[-1]["extra"]["resumed_from_step"] == STEPS - 1
    assert runs.metrics(copy) == runs.metrics(workdir)
    first = artifact.load(str(workdir / "artifact")).theta
    again = artifact.load(str(copy / "artifact")).theta
    jax.tree.map(np.testing.assert_array_equal, again, first)


def test_a_finished_run_started_again_keeps_its_artifact(finished):
    workdir, sft, data_dir = finished
    theta_file = workdir / "artifact" / artifact.THETA
    before = (theta_file.read_bytes(), os.stat(theta_file).st_mtime_ns)
    done = _run(workdir, sft, data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is finished" in done.stderr
    assert (theta_file.read_bytes(), os.stat(theta_file).st_mtime_ns) == before
    assert len(runs.metrics(workdir)) == STEPS


def test_bad_inputs_are_user_errors(tmp_path):
    # In process (a UserError is one line and exit 2 at every entry point: tests/test_errors.py).
    with pytest.raises(cli.UserError, match="config.rlhf.sft_from is required"):
        reward_run.run(meta_train_reward.get_config("smoke"), str(tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a")
    config = meta_train_reward.get_config("smoke")
    config.rlhf.sft_from = "/somewhere"
    config.estimator.population = 3
    with pytest.raises(cli.UserError, match="even population"):
        reward_run.check_config(config)
    config.estimator.population = 2
    config.inner.algorithm = "a2c"
    with pytest.raises(cli.UserError, match="inner.algorithm='a2c'"):
        reward_run.check_config(config)
    config.outer.optimizer = "rmsprop"
    with pytest.raises(cli.UserError, match="use 'sgd' or 'adam'"):
        reward_run.outer_optimizer(config.outer)
