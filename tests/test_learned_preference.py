"""The learned preference loss: DPO training with it, and its inner problem for meta-training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rlhf as rlhf_configs
from learned_loss.core import cli, train
from learned_loss.core import model as model_lib
from learned_loss.data import preference_pairs, tasks
from learned_loss.meta import base, es, preference_problem, tbptt
from learned_loss.objectives import artifact, learned
from learned_loss.rlhf import training
from learned_loss.rlhf import data as rlhf_data
from learned_loss.rlhf import pipeline as rlhf_pipeline

SEQ_LEN = 23  # W = 24 tokens per scored sequence.
BETA = 0.5
# (prompt, gold answer, a worse answer); the worse ones differ in length from the gold ones, so
# the labeler's length bias matters.
QUESTIONS = [("count: a b", "2", "22"), ("count: a b c", "3", "three"), ("count: x", "1", ""),
             ("count: p q r s", "4", "5"), ("count: u v", "2", "twenty"),
             ("count: k l m", "3", "1")]


def _record(index, prompt, gold, chosen, rejected):
    return {"family": "count", "index": index, "prompt": prompt, "chosen": chosen,
            "rejected": rejected, "g_chosen": tasks.graded_score(chosen, gold),
            "g_rejected": tasks.graded_score(rejected, gold)}


def _labelled(num, seed, tau=0.5):
    """`num` pairs (gold answer vs a worse one) labelled by the noisy, length-biased labeler."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num):
        prompt, gold, worse = QUESTIONS[i % len(QUESTIONS)]
        a, b = (gold, worse) if rng.random() < 0.5 else (worse, gold)
        pair = preference_pairs.label_pair(rng, a, b, gold, tau=tau, length_bias=1.0,
                                           length_scale=8.0)
        records.append(_record(i, prompt, gold, pair.chosen, pair.rejected))
    return records


@pytest.fixture(scope="module")
def tiny():
    cfg = model_lib.ModelConfig(vocab_size=260, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                                max_len=SEQ_LEN + 1, init_scale=0.3)
    model = model_lib.build(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SEQ_LEN), jnp.int32))
    return model, params


@pytest.fixture(scope="module")
def rows():
    train = preference_problem.encode_records(_labelled(16, 0), SEQ_LEN)
    valid = preference_problem.encode_records(_labelled(12, 1), SEQ_LEN)
    return train, valid


def _moved(theta, seed=1):
    """theta away from its DPO initialisation (h != 0, with a slope everywhere)."""
    key = jax.random.key(seed)
    return dict(theta, w1=0.5 * jax.random.normal(key, theta["w1"].shape),
                b1=jnp.full((), 0.1, jnp.float32))  # Strongly typed, as theta + eps d will be.


# ---- DPO with a learned preference loss --------------------------------------------------------


def test_learned_dpo_at_init_is_dpo(tiny, rows):
    model, params = tiny
    batch = {k: jnp.asarray(v[:6]) for k, v in rows[0].batch().items()}
    # A reference other than the policy, so that delta != 0 and the pairs weigh differently.
    reference = jax.tree.map(lambda x: 0.9 * x, params)
    theta = learned.init_preference_loss(jax.random.key(3))

    def value_and_grad(loss_fn):
        fn = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, batch, reference), has_aux=True))
        (value, metrics), grads = fn(params)
        return value, metrics, grads

    dpo_value, _, dpo_grads = value_and_grad(training.dpo_loss_fn(model, beta=BETA))
    ours, metrics, grads = value_and_grad(
        training.dpo_loss_fn(model, beta=BETA, loss_type="learned", preference_theta=theta))
    assert abs(float(dpo_value) - np.log(2.0)) > 1e-3  # Not the trivial delta = 0.
    np.testing.assert_allclose(ours, dpo_value, rtol=1e-6)
    np.testing.assert_allclose(metrics["dpo_loss"], dpo_value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(dpo_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Off its initialisation: mean over the pairs of -log sigmoid(x) + h(x / 4), x = beta delta,
    # with h = w1 . tanh(w0 u + b0) + b1 worked out here.
    moved_theta = _moved(theta)
    moved = training.dpo_loss_fn(model, beta=BETA, loss_type="learned",
                                 preference_theta=moved_theta)
    x = np.asarray(preference_problem.margins(model, params, reference, batch, BETA), np.float64)
    p = {k: np.asarray(v, np.float64) for k, v in moved_theta.items()}
    h = np.tanh((x / 4.0)[:, None] @ p["w0"] + p["b0"]) @ p["w1"] + p["b1"]  # [B]
    np.testing.assert_allclose(jax.jit(moved)(params, batch, reference)[0],
                               np.mean(np.log1p(np.exp(-x)) + h), rtol=1e-5)
    with pytest.raises(ValueError, match="needs preference_theta"):
        training.dpo_loss_fn(model, loss_type="learned")
    with pytest.raises(ValueError, match="label_smoothing"):
        training.dpo_loss_fn(model, loss_type="learned", preference_theta=theta,
                         label_smoothing=0.1)


def test_rlhf_config_selects_the_learned_loss(tmp_path):
    config = rlhf_configs.get_config("smoke")
    config.sft_from = "/nowhere"
    assert rlhf_pipeline.preference_theta(config) is None  # loss_type 'sigmoid'.
    config.dpo.loss_type = "learned"
    rlhf_pipeline._check_config(config)
    initial = rlhf_pipeline.preference_theta(config)
    np.testing.assert_array_equal(initial["w1"], 0.0)  # The DPO initialisation.
    path = str(tmp_path / "artifact")
    saved = _moved(learned.init_preference_loss(jax.random.key(4)))
    artifact.save(path, "learned_preference_loss", saved, {"hidden": 16}, {})
    config.dpo.learned_path = path
    loaded = rlhf_pipeline.preference_theta(config)
    assert sorted(loaded) == sorted(saved)  # Every array back bit for bit, not only w1.
    for name in saved:
        np.testing.assert_array_equal(loaded[name], saved[name])
    artifact.save(path, "learned_token_loss", saved, {}, {})
    with pytest.raises(artifact.ArtifactError, match="dpo.learned_path: .*learned_token_loss"):
        rlhf_pipeline.preference_theta(config)
    config.dpo.learned_path = str(tmp_path / "missing")
    with pytest.raises(artifact.ArtifactError, match="no learned-objective artifact"):
        rlhf_pipeline.preference_theta(config)
    config.dpo.label_smoothing = 0.1
    with pytest.raises(cli.UserError, match="label_smoothing"):
        rlhf_pipeline._check_config(config)
    config.dpo.loss_type = "hinge"
    with pytest.raises(cli.UserError, match="'sigmoid', 'ipo' or 'learned'"):
        rlhf_pipeline._check_config(config)


# ---- the pairs -------------------------------------------------------------------------------


def test_flipped_labels_show_in_the_disagreement_flag():
    records = [_record(i, p, g, g, w) for i, (p, g, w) in enumerate(QUESTIONS)]
    flips = [1, 4]
    for i in flips:  # The labeler chose the worse answer.
        r = records[i]
        records[i] = dict(r, chosen=r["rejected"], rejected=r["chosen"],
                          g_chosen=r["g_rejected"], g_rejected=r["g_chosen"])
    records.append(_record(len(records), "count: a", "1", "7", "8"))  # A gold tie.
    rows = preference_problem.encode_records(records[::-1], SEQ_LEN)  # Sorted back by index.
    expected = np.zeros(len(records), bool)
    expected[flips] = True
    np.testing.assert_array_equal(rows.flipped, expected)
    assert rows.flipped.mean() == pytest.approx(2 / 7)
    assert rows.gold_order[-1] == 0
    # Gold order: the flipped pairs swapped back, the tie dropped.
    gold = preference_problem.gold_ordered(rows)
    assert len(gold) == 6 and np.all(gold.gold_order == 1) and not gold.flipped.any()
    np.testing.assert_array_equal(gold.chosen[1], rows.rejected[1])
    np.testing.assert_array_equal(gold.rejected_length[4], rows.chosen_length[4])
    first = rlhf_data.encode_pair(records[0], SEQ_LEN)
    np.testing.assert_array_equal(gold.chosen[0], first["chosen"])
    # The simulated labeler at a high temperature flips some labels, and the flag sees them.
    noisy = _labelled(60, 2, tau=1.0)
    labelled = preference_problem.encode_records(noisy, SEQ_LEN)
    worse = np.array([r["g_chosen"] < r["g_rejected"] for r in noisy])
    np.testing.assert_array_equal(labelled.flipped, worse)
    assert 0.1 < labelled.flipped.mean() < 0.5


# ---- the inner problem -----------------------------------------------------------------------


def _problem(tiny, rows, lr=1e-2):
    model, params = tiny
    return preference_problem.preference_problem(
        model, train.make_optimizer(train.constant_adam(lr), differentiable=True), *rows,
        reference_params=params, batch_size=4,
        valid_batch_size=6, beta=BETA)


def test_an_inner_step_at_init_is_a_dpo_step(tiny, rows):
    model, params = tiny
    optimizer = train.make_optimizer(train.constant_adam(1e-2), differentiable=True)
    problem = _problem(tiny, rows)
    theta = learned.init_preference_loss(jax.random.key(3))
    inner = problem.init(jax.random.key(0))
    meta_loss = jax.jit(problem.meta_loss)
    # At the start the policy is the reference: delta = 0 and the meta-loss is log 2.
    assert float(meta_loss(inner, jax.random.key(9))) == pytest.approx(np.log(2.0), abs=1e-6)
    pairs = {k: jnp.asarray(v) for k, v in rows[0].batch().items()}
    dpo_loss = training.dpo_loss_fn(model, beta=BETA)

    @jax.jit
    def dpo_step(p, opt_state, key):
        batch = preference_problem.draw(pairs, key, 4)
        grads = jax.grad(lambda q: dpo_loss(q, batch, params)[0])(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return jax.tree.map(lambda a, u: a + u, p, updates), opt_state

    step = jax.jit(problem.step)
    expected, opt_state = params, optimizer.init(params)
    for i in range(2):  # From the reference, then from a policy that has moved off it.
        key = jax.random.key(10 + i)
        inner = step(theta, inner, key)
        expected, opt_state = dpo_step(expected, opt_state, key)
        for a, b in zip(jax.tree.leaves(inner["params"]), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(inner["step"]) == 2
    # The meta-loss is DPO's loss of the policy on a batch of the validation pairs in the gold
    # order: worked out from the DPO steps' policy above. Away from log 2 (the loss at the
    # reference, whatever the pairs), so the policy moved enough for the check to tell.
    valid = {k: jnp.asarray(v)
             for k, v in preference_problem.gold_ordered(rows[1]).batch().items()}
    pairs = preference_problem.draw(valid, jax.random.key(9), 6)
    x = np.asarray(preference_problem.margins(model, expected, params, pairs, BETA), np.float64)
    hand = np.mean(np.log1p(np.exp(-x)))  # -log sigmoid(x)
    np.testing.assert_allclose(meta_loss(inner, jax.random.key(9)), hand, rtol=1e-5)
    assert abs(hand - np.log(2.0)) > 1e-4


def test_tbptt_gradient_matches_finite_differences(tiny, rows):
    problem = _problem(tiny, rows, lr=3e-2)
    schedule = base.TruncationSchedule(2, 4, 4)
    estimator = tbptt.tbptt(problem, schedule, num_particles=1)
    theta = _moved(learned.init_preference_loss(jax.random.key(3)))
    state = estimator.init(theta, jax.random.key(0))
    key = jax.random.key(7)
    estimate = jax.jit(estimator.estimate)
    grad, _, metrics = estimate(theta, state, key)
    assert float(metrics["diverged"]) == 0.0
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
    # The same unroll (same state, same key) under theta +- eps d: its meta-loss.
    direction = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), theta)
    eps = 1e-2

    def meta_loss(sign):
        shifted = jax.tree.map(lambda t, d: t + sign * eps * d, theta, direction)
        return float(estimate(shifted, state, key)[2]["meta_loss"])

    numeric = (meta_loss(1.0) - meta_loss(-1.0)) / (2 * eps)
    analytic = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree.leaves(grad),
                                                          jax.tree.leaves(direction)))
    assert abs(analytic) > 1e-4
    np.testing.assert_allclose(analytic, numeric, rtol=0.05, atol=1e-5)


def test_es_estimate_is_finite(tiny, rows):
    problem = _problem(tiny, rows)
    estimator = es.antithetic_es(problem, base.TruncationSchedule(1, 2, 2), num_pairs=2,
                                 sigma=0.05)
    theta = learned.init_preference_loss(jax.random.key(3))
    state = estimator.init(theta, jax.random.key(0))
    grad, state, metrics = jax.jit(estimator.estimate)(theta, state, jax.random.key(1))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
    assert np.isfinite(float(metrics["meta_loss"])) and float(metrics["diverged"]) == 0.0
    np.testing.assert_array_equal(state.step, [1, 1])
