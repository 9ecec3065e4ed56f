"""The learned reward r_theta in RL: equal to the reward model at init, used by the RLHF pipeline
from an artifact, scored by the gold metric in its meta-training problem, and host-side ES.

The policies here are a one-layer Transformer whose final norm is switched off, so that every
position emits '3' with probability sigmoid(a3 - a_eos) and EOS otherwise (other bytes have
logit -30): a completion is '3' * n, and RL moves only that one probability. The reward model is
a stand-in that scores a sequence by `slope` times the number of '3's after SEP: a reward model
that only likes length.
"""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import finetune as finetune_configs
from configs import rlhf as rlhf_configs
from learned_loss.core import cli, policy, sharding, train
from learned_loss.core import model as model_lib
from learned_loss.data import tasks, tokenizer
from learned_loss.meta import host_es, reward_problem
from learned_loss.objectives import artifact, learned
from learned_loss.rlhf import rollout, training
from learned_loss.rlhf import data as rlhf_data
from learned_loss.rlhf import pipeline as rlhf_pipeline

THREE = ord("3")
MAX_NEW = 8
CONFIG = model_lib.ModelConfig(vocab_size=260, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                               max_len=80, tie_embeddings=False, init_scale=0.3)


def two_token_policy(a3: float, a_eos: float):
    """(model, params): every position emits '3' w.p. sigmoid(a3 - a_eos), else EOS."""
    model = model_lib.build(CONFIG)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    params = jax.tree.map(np.array, params)  # writable host copies
    norm = next(k for k in params if k.endswith("final_norm"))
    unembed = next(k for k in params if k.endswith("unembed"))
    params[norm]["scale"] = np.zeros_like(params[norm]["scale"])  # x -> offset, everywhere
    offset = np.zeros_like(params[norm]["offset"])
    offset[0] = 1.0
    params[norm]["offset"] = offset
    w = np.zeros_like(params[unembed]["w"])  # [D, V]: logits = offset @ w = w[0]
    w[0] = -30.0
    w[0, THREE], w[0, tokenizer.EOS] = a3, a_eos
    params[unembed]["w"] = w
    return model, jax.tree.map(jnp.asarray, params)


def length_reward_model(slope: float):
    """(model, params) whose scalar at position t is slope x the '3's after SEP up to t."""

    def apply(params, tokens, cache=None):
        del cache
        after_sep = jnp.cumsum(tokens == tokenizer.SEP, axis=1) > 0  # [B, T]
        count = jnp.cumsum((tokens == THREE) & after_sep, axis=1)  # [B, T]
        return model_lib.Output(logits=None, scalar=params["slope"] * count, cache=None)

    head = dataclasses.replace(CONFIG, scalar_head=True)
    return model_lib.Model(head, None, apply), {"slope": jnp.asarray(slope, jnp.float32)}


def length_penalty(a: float, c: float) -> dict:
    """theta with one hidden unit: k = -a tanh(c log(1 + n) / 4), n the completion length."""
    return {"w0": jnp.array([[0.0], [c], [0.0]]), "b0": jnp.zeros((1,)),
            "w1": jnp.array([-a]), "b1": jnp.zeros(())}


def _rlhf_config(**rl):
    config = rlhf_configs.get_config("smoke")
    config.rl.max_new_tokens = MAX_NEW
    config.rl.update(rl)
    return config


# ---- the reward of an RL step -------------------------------------------------------------------


def test_shaped_scores_hand_values():
    ro = rollout.Rollout(sequences=None, positions=None, completions=None, mask=None,
                         lengths=jnp.array([1, 3, 8]), finished=jnp.array([True, True, False]),
                         end=None)
    proxy = jnp.array([0.5, 1.0, 2.0])  # [R]
    # At init: the reward model's score; the missing-EOS penalty (1) on the third row only.
    reward, score = training.shaped_scores({}, proxy, ro, 1.0)
    np.testing.assert_array_equal(reward, proxy)
    np.testing.assert_array_equal(score, [0.5, 1.0, 1.0])
    theta0 = learned.init_reward(jax.random.key(0))
    reward, _ = jax.jit(training.shaped_scores, static_argnums=3)(
        {"learned_reward": theta0}, proxy, ro, 1.0)
    np.testing.assert_array_equal(reward, proxy)
    # A length penalty: n = lengths - finished = [0, 2, 8] tokens before the EOS;
    # k = -2 tanh(log(1 + n) / 4) = [0, -2 tanh(log 3 / 4), -2 tanh(log 3 / 2)]
    #   = [0, -0.535898, -1]   (tanh(log 3 / 2) = (3 - 1) / (3 + 1)).
    reward, score = training.shaped_scores({"learned_reward": length_penalty(2.0, 1.0)}, proxy, ro,
                                       1.0)
    np.testing.assert_allclose(reward, [0.5, 0.464102, 1.0], rtol=1e-6)
    np.testing.assert_allclose(score, [0.5, 0.464102, 0.0], rtol=1e-6, atol=1e-6)


# ---- the meta-training problem ------------------------------------------------------------------


@pytest.fixture(scope="module")
def problem():
    """RLOO runs of the '3'-or-EOS policy (p = 0.5) against the length-only reward model; the
    held-out prompts' gold answer is the empty string, so the gold graded score of a sample
    is 1 when it stops at once and 0 otherwise."""
    config = _rlhf_config(missing_eos_penalty=0.0)
    model, params = two_token_policy(0.0, 0.0)
    reference, reward = (model, params), length_reward_model(1.0)
    families = ("count_words",)
    width = rlhf_pipeline.prompt_width(config)
    evaluator = rlhf_pipeline.Evaluator(config, families, reference=reference, reward=reward,
                                        width=width, prompts_per_family=1, samples_per_prompt=1,
                                        seed_offset=3)
    evaluator.examples = [tasks.Example("count_words", f"Say nothing ({i}).", "", 1, 0)
                          for i in range(16)]
    evaluator.samples = 4
    optimizer = optax.adam(0.1)
    settings = training.RLSettings(algorithm="rloo", samples_per_prompt=4, max_new_tokens=MAX_NEW,
                               epochs=1, minibatches=1, missing_eos_penalty=0.0)
    stream = rlhf_data.PromptStream(families, difficulty=(1, 1), seed=5, global_batch_size=4,
                                    width=width, kl_coef=0.0)
    state = train.TrainState(params=params, opt_state=optimizer.init(params),
                             step=jnp.zeros((), jnp.int32),
                             rng=jax.random.key_data(jax.random.key(0)))
    return reward_problem.RewardProblem(
        model=model, optimizer=optimizer, init_state=state, reference=reference, reward=reward,
        settings=settings, stream=stream, horizon=4, evaluator=evaluator)


def test_rl_at_init_is_rl_on_the_reward_model(problem):
    key = jax.random.key(1)
    on_rm, rm_metrics = problem.train(None, key, 0)
    theta0 = learned.init_reward(jax.random.key(7))
    on_init, init_metrics = problem.train(theta0, key, 0)
    start = problem.init_state.params
    # The runs moved the policy (so the comparison says something), and moved it alike: the two
    # are different programs (one reads the learned reward), whose rounding differences grow
    # over the RL steps (largest 1.7e-5 measured, with the suite's compile flags; below 1e-7
    # with XLA's defaults), 3000 times less than the policy moved.
    assert max(float(jnp.abs(a - b).max()) for a, b in
               zip(jax.tree.leaves(on_rm), jax.tree.leaves(start))) > 0.05
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), on_rm,
                 on_init)
    for name in ("proxy_reward", "score", "policy_loss", "length"):
        assert init_metrics[name] == pytest.approx(rm_metrics[name], rel=1e-6, abs=1e-7), name
    assert init_metrics["learned_reward"] == pytest.approx(init_metrics["proxy_reward"])
    assert "learned_reward" not in rm_metrics


def test_fitness_is_the_gold_score_and_a_length_penalty_raises_it(problem):
    key = jax.random.key(2)
    theta0 = learned.init_reward(jax.random.key(7))
    on_rm = problem.run(theta0, key, 0)
    penalised = problem.run(length_penalty(5.0, 20.0), key, 0)
    # Fitness is minus the gold graded score of the final policy's held-out samples: recompute
    # it from the samples with the task suite's scorer.
    for outcome in (on_rm, penalised):
        per = problem.evaluator.samples_of(problem.model, outcome.params)
        np.testing.assert_array_equal(per["gold_graded"], per["length"] == 0)
        assert outcome.loss == pytest.approx(-per["gold_graded"].mean())
        assert outcome.summary["diverged"] == 0.0
    # The reward model pays for length: RL on it lengthens the completions and the gold score
    # falls below the start's 0.5; a penalty of 5 per non-empty completion (more than the
    # reward model's 1 per token, for n < 5) shortens them and raises the gold score, at the
    # reward model's expense.
    assert on_rm.summary["gold_graded"] < 0.4 < 0.6 < penalised.summary["gold_graded"]
    assert on_rm.summary["length"] > penalised.summary["length"]
    assert on_rm.summary["proxy"] > penalised.summary["proxy"]
    assert problem.meta_loss(length_penalty(5.0, 20.0), key, 0) == penalised.loss  # deterministic


def test_a_population_trains_side_by_side_as_its_members_alone(problem):
    """run_population vmaps the inner run over theta's leading axis: each member ends where its
    own run does (to rounding: a batched program), in one program or one member per program."""
    key = jax.random.key(4)
    thetas = [learned.init_reward(jax.random.key(7), hidden=1), length_penalty(5.0, 20.0),
              learned.damping_reward(0.5)]
    members = jax.tree.map(lambda *x: jnp.stack(x), *thetas)
    alone = [problem.run(t, key, 0) for t in thetas]
    for per_program in (0, 2):
        together = problem.run_population(members, key, 0, per_program)
        assert len(together) == 3
        for a, b in zip(alone, together):
            jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4),
                         a.params, b.params)
            assert b.summary["gold_graded"] == pytest.approx(a.summary["gold_graded"], abs=0.05)
    # The members differ (the penalty shortens the completions), so the test can tell them
    # apart.
    assert together[1].summary["length"] < together[0].summary["length"]


def test_the_damping_reward_scales_the_score_down():
    # r = s + w1 tanh(slope s / 4), w1 = -4 factor / slope: (1 - factor) s to (slope s/4)^2 / 3.
    score = jnp.array([-2.0, 0.5, 3.0])
    theta = learned.damping_reward(0.9, hidden=3)
    r = learned.reward(theta, score, jnp.array([1, 5, 9]), jnp.array([True, False, True]))
    np.testing.assert_allclose(r, 0.1 * score, rtol=0, atol=0.9 * 3.0 * (0.01 * 3 / 4) ** 2 / 3
                               + 1e-6)
    assert not np.allclose(r, score)
    assert learned.check_reward_theta(theta)["w0"].shape == (3, 3)
    assert float(theta["w1"][1]) == float(theta["w0"][1, 0]) == 0.0  # one unit, the score only


def test_a_diverged_run_scores_nan(problem):
    blown = dict(learned.init_reward(jax.random.key(0)), b1=jnp.asarray(jnp.nan))
    outcome = problem.run(blown, jax.random.key(3), 0)
    assert math.isnan(outcome.loss) and outcome.summary["diverged"] == 1.0
    assert outcome.params is None


def test_stream_batches_do_not_move_the_stream(problem):
    stream = problem.stream
    before = stream.get_state()
    batches = reward_problem.stream_batches(stream, 3, 2)  # rows 12..19 of the stream
    assert stream.get_state() == before
    assert batches["prompts"].shape[:2] == (2, 4) and batches["kl_coef"].shape == (2, 4)
    row = stream.example(12 + 5)
    prompt = tasks.prompt_tokens(row)
    np.testing.assert_array_equal(batches["prompts"][1, 1, :len(prompt)], prompt)


# ---- the RLHF pipeline on a learned_reward artifact ---------------------------------------------


def _save(tmp_path, theta, name="learned_reward"):
    path = str(tmp_path / name)
    artifact.save(path, name, jax.device_get(theta), {"hidden": 1}, {})
    return path


def test_pipeline_rl_maximises_the_learned_reward(tmp_path):
    """train_rl of the pipeline with rl.reward='learned': the policy always writes '3' * 8
    without an EOS, so every reward is known: proxy 0.5 * 8 = 4, r_theta = 4 - 2 tanh(log 9 /
    4) = 4 - 1 = 3, and the score after the missing-EOS penalty (1) is 2."""
    config = _rlhf_config(global_batch_size=2, samples_per_prompt=2, epochs=1, minibatches=1,
                          reward="learned",
                          learned_reward_path=_save(tmp_path, length_penalty(2.0, 1.0)))
    config.rl.train.num_steps = 1
    theta = rlhf_pipeline.reward_theta(config)
    model, params = two_token_policy(30.0, -30.0)
    sft_config = finetune_configs.get_config("smoke")
    sft_config.model = ml_collections.ConfigDict(dataclasses.asdict(CONFIG))
    sft = policy.Policy("(in memory)", sft_config, model, params, 0)
    mesh = sharding.make_mesh({"data": 1, "model": 1}, devices=jax.devices()[:1])
    workdir = str(tmp_path / "rloo")
    rlhf_pipeline.train_rl(config, "rloo", sft, ("count_words",), mesh, (model, params),
                           length_reward_model(0.5), lambda *_: {}, workdir, theta)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        record = json.loads(f.readline())
    assert record["length"] == MAX_NEW and record["finished"] == 0.0
    assert record["proxy_reward"] == pytest.approx(4.0)
    assert record["learned_reward"] == pytest.approx(3.0, rel=1e-5)
    assert record["score"] == pytest.approx(2.0, rel=1e-5)
    with open(os.path.join(workdir, "provenance.json")) as f:
        assert '"reward": "learned"' in f.read()


def test_reward_theta_reads_the_artifact_and_refuses_bad_ones(tmp_path):
    theta = learned.init_reward(jax.random.key(0), hidden=3)
    good = _save(tmp_path, theta)
    config = _rlhf_config(reward="learned", learned_reward_path=good)
    loaded = rlhf_pipeline.reward_theta(config)
    jax.tree.map(np.testing.assert_array_equal, loaded, theta)
    assert rlhf_pipeline.reward_theta(_rlhf_config()) is None  # the default: the reward model

    def error(path):
        with pytest.raises(artifact.ArtifactError) as raised:
            rlhf_pipeline.reward_theta(_rlhf_config(reward="learned", learned_reward_path=path))
        return str(raised.value)

    assert "rl.learned_reward_path" in error(str(tmp_path / "missing"))
    assert "no learned-objective artifact" in error(str(tmp_path / "missing"))
    other = _save(tmp_path, theta, name="learned_token_loss")
    assert "not 'learned_reward'" in error(other)
    wrong = str(tmp_path / "wrong_shape")
    artifact.save(wrong, "learned_reward", {"w0": np.zeros((2, 3)), "b0": np.zeros(3),
                                            "w1": np.zeros(3), "b1": np.zeros(())}, {}, {})
    assert "w0 [3, H]" in error(wrong)
    with open(os.path.join(good, artifact.THETA), "ab") as f:
        f.write(b"corrupt")
    assert "corrupt artifact" in error(good)
    with pytest.raises(cli.UserError, match="needs rl.learned_reward_path"):
        rlhf_pipeline.reward_theta(_rlhf_config(reward="learned"))
    with pytest.raises(cli.UserError, match="rl.reward='bonus'"):
        rlhf_pipeline._check_config(dict_config(_rlhf_config(reward="bonus")))


def dict_config(config):
    config.sft_from = "/somewhere"
    return config


# ---- ES with the fitness on the host ------------------------------------------------------------


def test_host_es_descends_a_quadratic_and_ranks_failures_last():
    target = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    theta0 = jax.tree.map(jnp.zeros_like, target)
    es = host_es.host_es(theta0, population=8, sigma=0.1)
    optimizer = optax.sgd(0.05)
    state = host_es.init_state(es, optimizer, theta0, jax.random.key(0))
    step = host_es.outer_step_fn(es, optimizer)
    calls = []

    def loss(theta, key):
        calls.append(key)
        return float(sum(jnp.sum((theta[k] - target[k]) ** 2) for k in target))

    first = loss(theta0, None)
    for _ in range(30):
        state, metrics, losses = step(state, host_es.one_at_a_time(loss))
    assert losses.shape == (8,) and metrics["diverged"] == 0.0
    assert loss(state.theta, None) < 0.2 * first
    # Every member of a step got the same key (common random numbers).
    assert all(jnp.array_equal(jax.random.key_data(calls[i]), jax.random.key_data(calls[1]))
               for i in range(1, 9))
    # A member that fails (NaN) is counted and ranks last; theta stays finite.
    failing = lambda theta, key: float("nan") if float(theta["b"]) > 0.5 else loss(theta, key)
    state, metrics, losses = step(state, host_es.one_at_a_time(failing))
    assert 0.0 < float(metrics["diverged"]) < 1.0 and np.isnan(losses).any()
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.theta))
    with pytest.raises(ValueError, match="even population"):
        host_es.host_es(theta0, population=3)


def test_host_es_hands_the_population_over_at_once():
    """A population loss gets every member in one pytree whose leaves lead with P: the same
    losses as member by member, so the same step; a loss per member is required."""
    theta0 = {"a": jnp.zeros((2,)), "b": jnp.zeros(())}
    es = host_es.host_es(theta0, population=4, sigma=0.1)
    optimizer = optax.sgd(0.05)
    state = host_es.init_state(es, optimizer, theta0, jax.random.key(0))
    step = host_es.outer_step_fn(es, optimizer)
    loss = lambda theta, key: float(jnp.sum((theta["a"] - 1.0) ** 2) + theta["b"] ** 2)
    seen = []

    def at_once(members, key):
        seen.append(jax.tree.map(jnp.shape, members))
        return np.asarray(jnp.sum((members["a"] - 1.0) ** 2, axis=1) + members["b"] ** 2)

    together, _, losses = step(state, at_once)
    apart, _, losses_apart = step(state, host_es.one_at_a_time(loss))
    assert seen == [{"a": (4, 2), "b": (4,)}]
    np.testing.assert_allclose(losses, losses_apart, rtol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5), together.theta,
                 apart.theta)
    with pytest.raises(ValueError, match="one loss per member"):
        step(state, lambda members, key: np.zeros(3))
