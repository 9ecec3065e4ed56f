"""RLHF plumbing: encoded pairs, the prompt stream, rollouts, and the jitted RL step on a mesh."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import models, optimizers
from learned_loss.core import sampling, sharding, train
from learned_loss.core import model as model_lib
from learned_loss.data import tasks, tokenizer
from learned_loss.objectives import learned, reward_model
from learned_loss.rlhf import rollout, training
from learned_loss.rlhf import data as rlhf_data

FAMILIES = ("count_words", "list_length")


def _noisy(params, seed, scale=0.3):
    """Large random weights, so that samples vary (the init scale gives near-uniform logits)."""
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(tree, [x + scale * rng.standard_normal(x.shape).astype(np.float32)
                                     for x in leaves])


@pytest.fixture(scope="module")
def models_():
    base = models.model_config("nano", max_len=64)
    policy = model_lib.build(model_lib.ModelConfig.from_config(base))
    head = dict(base.to_dict(), scalar_head=True)
    with_head = model_lib.build(model_lib.ModelConfig.from_config(head))
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = _noisy(policy.init(jax.random.key(0), tokens), 0)
    head_params = _noisy(with_head.init(jax.random.key(1), tokens), 1)
    return policy, params, with_head, head_params


def test_encode_completion_layout():
    tokens, length, prompt_length = rlhf_data.encode_completion("Hi?", "ok", 12)
    expected = [tokenizer.BOS, *b"Hi?", tokenizer.SEP, *b"ok", tokenizer.EOS]
    assert length == len(expected) == 8 and prompt_length == 5
    np.testing.assert_array_equal(tokens[:8], expected)
    assert (tokens[8:] == tokenizer.PAD).all()
    with pytest.raises(ValueError, match="more than 7"):
        rlhf_data.encode_completion("Hi?", "ok", 7)


def _stream(**kw):
    args = dict(difficulty=(1, 1), seed=3, global_batch_size=4, width=48, kl_coef=0.05)
    args.update(kw)
    return rlhf_data.PromptStream(FAMILIES, **args)


def test_prompt_stream_is_positional_split_and_resumable():
    one = _stream()
    batches = [next(one) for _ in range(3)]
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                      [8, 9, 10, 11]]
    row = one.example(5)
    assert row.family == FAMILIES[5 % 2]
    np.testing.assert_array_equal(batches[1]["prompts"][1, :batches[1]["prompt_lengths"][1]],
                                  tasks.prompt_tokens(row))
    # Two processes: their rows, concatenated, are the single process's batch.
    halves = [next(_stream(process_index=p, process_count=2)) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["prompts"] for h in halves]),
                                  batches[0]["prompts"])
    # Resume from a saved state.
    state = one.get_state()
    again = _stream()
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["prompts"], next(one)["prompts"])
    with pytest.raises(ValueError, match="not a prompt-stream state"):
        again.set_state({"step": 1})
    with pytest.raises(ValueError, match="raise preferences.seq_len"):
        next(_stream(width=10))


def test_adaptive_kl_controller_in_the_stream():
    fixed = _stream()
    fixed.observe_kl(100.0, 64)
    assert fixed.kl_coef == 0.05
    np.testing.assert_allclose(next(fixed)["kl_coef"], [0.05] * 4)
    adaptive = _stream(kl_target=1.0, kl_horizon=100.0)
    adaptive.observe_kl(3.0, 10)  # error clipped to +0.2: 0.05 * (1 + 0.2 * 10 / 100)
    assert adaptive.kl_coef == pytest.approx(0.05 * 1.02)
    adaptive.observe_kl(0.5, 10)  # error -0.5 clipped to -0.2
    assert adaptive.kl_coef == pytest.approx(0.05 * 1.02 * 0.98)
    restored = _stream(kl_target=1.0, kl_horizon=100.0)
    restored.set_state(adaptive.get_state())
    assert restored.kl_coef == adaptive.kl_coef


def test_gold_scores():
    rows, _ = sampling.pad_prompts([tokenizer.encode("7", eos=True),
                                    tokenizer.encode("75", eos=True)], pad_to=4)
    exact, graded = rlhf_data.gold_scores(rows, ["7", "7"])
    np.testing.assert_allclose(exact, [1.0, 0.0])
    np.testing.assert_allclose(graded, [1.0, 0.5])


def test_rollout_fields_match_the_generation(models_):
    policy, params, _, _ = models_
    prompts, lengths = sampling.pad_prompts([[tokenizer.BOS, 65, 66, tokenizer.SEP],
                                             [tokenizer.BOS, tokenizer.SEP]])
    prompts, lengths = rollout.repeat_prompts(jnp.asarray(prompts), jnp.asarray(lengths), 3)
    assert prompts.shape == (6, 4) and lengths.tolist() == [4, 4, 4, 2, 2, 2]
    ro = rollout.sample(policy, params, prompts, lengths, jax.random.key(2), max_new_tokens=10)
    gen = sampling.generate(policy, params, prompts, lengths, jax.random.key(2),
                            max_new_tokens=10, temperature=1.0)
    np.testing.assert_array_equal(ro.completions, gen.tokens)
    np.testing.assert_array_equal(ro.mask.sum(axis=1), gen.lengths)
    logp, values = rollout.policy_outputs(policy, params, ro)
    assert values is None
    np.testing.assert_allclose(logp, gen.log_probs, atol=2e-5)
    seq = np.asarray(ro.sequences)
    for b in range(6):
        lp, n = int(lengths[b]), int(gen.lengths[b])
        np.testing.assert_array_equal(seq[b, lp:lp + n], gen.tokens[b, :n])
        if gen.finished[b]:
            assert seq[b, int(ro.end[b])] == tokenizer.EOS


def test_reward_loss_reads_the_eos(models_):
    _, _, with_head, head_params = models_
    chosen = [rlhf_data.encode_completion("Q1", "abc", 12),
              rlhf_data.encode_completion("Q2", "z", 12)]
    rejected = [rlhf_data.encode_completion("Q1", "ab", 12),
                rlhf_data.encode_completion("Q2", "zzzz", 12)]
    batch = {"chosen": np.stack([c[0] for c in chosen]),
             "rejected": np.stack([r[0] for r in rejected]),
             "chosen_length": np.array([c[1] for c in chosen], np.int32),
             "rejected_length": np.array([r[1] for r in rejected], np.int32),
             "gold_order": np.array([1.0, 0.0], np.float32)}  # The second pair ties.
    loss, metrics = jax.jit(training.reward_loss_fn(with_head))(head_params, batch, ())
    scalar = with_head.apply(head_params, jnp.asarray(batch["chosen"])).scalar
    r_chosen = scalar[np.arange(2), batch["chosen_length"] - 1]
    scalar = with_head.apply(head_params, jnp.asarray(batch["rejected"])).scalar
    r_rejected = scalar[np.arange(2), batch["rejected_length"] - 1]
    expected, _ = reward_model.bradley_terry_loss(r_chosen, r_rejected)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert metrics["accuracy"] == float(np.mean(r_chosen > r_rejected))
    assert metrics["gold_accuracy"] == float(r_chosen[0] > r_rejected[0])  # Ties do not count.


def test_completion_log_prob_matches_sequence_scoring(models_):
    policy, params, _, _ = models_
    tokens, length, prompt_length = rlhf_data.encode_completion("Count: a b", "2", 16)
    total = training.completion_log_prob(policy, params, jnp.asarray(tokens[None]),
                                     jnp.array([prompt_length]), jnp.array([length]))
    prompts, lengths = sampling.pad_prompts([tokens[:prompt_length]])
    completion = tokens[prompt_length:length]
    per_token = sampling.sequence_log_probs(policy, params, prompts, lengths,
                                            completion[None], np.array([len(completion)]))
    np.testing.assert_allclose(total, per_token.sum(), rtol=1e-5)
    mean = training.completion_log_prob(policy, params, jnp.asarray(tokens[None]),
                                    jnp.array([prompt_length]), jnp.array([length]),
                                    average=True)
    np.testing.assert_allclose(mean, per_token.sum() / len(completion), rtol=1e-5)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="samples_per_prompt must be >= 2"):
        training.RLSettings(algorithm="rloo", samples_per_prompt=1)
    with pytest.raises(ValueError, match="unknown RL algorithm"):
        training.RLSettings(algorithm="a2c")


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_rl_step_on_the_mesh(models_, algorithm):
    """The whole step jitted with shardings on 8 devices: it updates E * M times, the first
    rollout's KL to an identical reference is 0, and the same state gives the same step."""
    policy, params, with_head, head_params = models_
    model = with_head if algorithm == "ppo" else policy
    mesh = sharding.make_mesh({"data": -1, "model": 2})
    assert mesh.devices.size == 8
    settings = training.RLSettings(algorithm=algorithm, samples_per_prompt=2, max_new_tokens=6,
                               epochs=2, minibatches=2)
    optimizer = train.make_optimizer(optimizers.adamw(1e-3, 1, 0.0), 8)
    state, state_sh = train.create_sharded_state(model, optimizer, jax.random.key(0), 32,
                                                 models.PARTITION_RULES, mesh)
    start = dict(state.params, **params)  # The policy starts at the reference.
    state = state._replace(params=jax.device_put(start, state_sh.params))
    stream = _stream(global_batch_size=8, width=48)
    batch = sharding.shard_batch(next(stream), mesh)
    theta = {"reference": params, "reward": head_params}
    step = jax.jit(functools.partial(training.rl_step, model=model, reference_model=policy,
                                     reward_model_=with_head, optimizer=optimizer,
                                     settings=settings),
                   in_shardings=(state_sh, NamedSharding(mesh, sharding.batch_spec(mesh)), None),
                   out_shardings=(state_sh, NamedSharding(mesh, P()), NamedSharding(mesh, P())))
    copy = jax.tree.map(jnp.copy, state)
    new_state, metrics, (completions, finished) = step(state, batch, theta)
    assert int(new_state.step) == 4
    assert completions.shape == (16, 6) and finished.shape == (16,)
    assert float(metrics["kl"]) == pytest.approx(0.0, abs=1e-5)
    assert float(metrics["kl_coef"]) == pytest.approx(0.05)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state.params, copy.params)
    assert max(jax.tree.leaves(moved)) > 0
    again, metrics_again, _ = step(copy, batch, theta)
    assert jax.tree.map(float, metrics_again) == jax.tree.map(float, metrics)
    np.testing.assert_array_equal(jax.tree.leaves(again.params)[0],
                                  jax.tree.leaves(new_state.params)[0])


def _pair_batch(rows: int, width: int = 24) -> dict:
    """Pairs where the chosen answer is the right count and the rejected one is not."""
    out = {k: [] for k in ("chosen", "rejected", "chosen_length", "rejected_length",
                           "prompt_length")}
    for i in range(rows):
        prompt = "x " * (1 + i % 3)
        for side, answer in (("chosen", str(1 + i % 3)), ("rejected", str(5 + i % 3))):
            tokens, length, prompt_length = rlhf_data.encode_completion(prompt, answer, width)
            out[side].append(tokens)
            out[f"{side}_length"].append(length)
        out["prompt_length"].append(prompt_length)
    return {k: np.asarray(v, np.int32) for k, v in out.items()}


@pytest.mark.parametrize("kind", ["reward_model", "dpo"])
def test_pair_losses_train_on_the_mesh(models_, kind):
    """The reward-model and DPO steps, jitted with shardings on 8 devices, fit a few pairs."""
    policy, params, with_head, head_params = models_
    mesh = sharding.make_mesh({"data": -1, "model": 2})
    model = with_head if kind == "reward_model" else policy
    loss_fn = (training.reward_loss_fn(model) if kind == "reward_model"
               else training.dpo_loss_fn(model, beta=0.5))
    optimizer = train.make_optimizer(optimizers.adamw(3e-3, 1, 0.0), 30)
    state, state_sh = train.create_sharded_state(model, optimizer, jax.random.key(0), 24,
                                                 models.PARTITION_RULES, mesh)
    start = head_params if kind == "reward_model" else params
    # A host copy: the step donates its state, which must not share buffers with theta.
    state = state._replace(params=jax.device_put(jax.device_get(start), state_sh.params))
    step, evaluate = train.compile_steps(model, optimizer, None, state_sh, mesh,
                                         loss_fn=loss_fn)
    batch = sharding.shard_batch(_pair_batch(8), mesh)
    theta = () if kind == "reward_model" else params  # DPO's frozen reference.
    first = jax.device_get(evaluate(state.params, batch, theta))
    if kind == "dpo":  # The policy starts at the reference: delta = 0, loss = log 2.
        assert first["loss"] == pytest.approx(np.log(2.0), abs=1e-5)
    for _ in range(30):
        state, _ = step(state, batch, theta)
    last = jax.device_get(evaluate(state.params, batch, theta))
    assert last["loss"] < 0.5 * first["loss"]
    assert last["accuracy"] == 1.0


def test_a_stage_built_again_runs_the_same_programs(models_):
    """What an RLHF stage jits (state initialiser, train and eval steps, their losses) is built
    once per model, settings and shardings: a stage built again (another cell of the
    comparison) gets the same jitted functions, so it compiles nothing new. A learned
    preference loss is keyed by its theta's values."""
    policy, params, with_head, _ = models_
    mesh = sharding.make_mesh({"data": -1, "model": 2})
    built = []
    for _ in range(2):
        optimizer = train.make_optimizer(optimizers.adamw(3e-3, 1, 0.0), 30)
        _, state_sh = train.create_sharded_state(with_head, optimizer, jax.random.key(0), 24,
                                                 models.PARTITION_RULES, mesh)
        built.append(train.compile_steps(with_head, optimizer, None, state_sh, mesh,
                                         loss_fn=training.reward_loss_fn(with_head)))
    assert built[0][0] is built[1][0] and built[0][1] is built[1][1]
    theta = learned.init_preference_loss(jax.random.key(0))
    same = {k: np.array(v) for k, v in theta.items()}
    moved = dict(same, **{k: v + 1.0 for k, v in list(same.items())[:1]})
    assert (training.dpo_loss_fn(policy, loss_type="learned", preference_theta=theta)
            is training.dpo_loss_fn(policy, loss_type="learned", preference_theta=same))
    assert (training.dpo_loss_fn(policy, loss_type="learned", preference_theta=theta)
            is not training.dpo_loss_fn(policy, loss_type="learned", preference_theta=moved))
    assert training.dpo_loss_fn(policy, beta=0.5) is not training.dpo_loss_fn(policy, beta=0.1)
