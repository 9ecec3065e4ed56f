"""The learned objectives: exact at their initialisation, features, artifacts, config selection."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import objectives as objective_configs
from learned_loss import objectives
from learned_loss.core import errors, train
from learned_loss.core import model as model_lib
from learned_loss.objectives import artifact, dpo, learned, mle


def _batch(key, b=3, t=6, v=11):
    k1, k2 = jax.random.split(key)
    logits = jax.random.normal(k1, (b, t, v)) * 2.0
    targets = jax.random.randint(k2, (b, t), 0, v)
    mask = jnp.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], jnp.float32)
    ref = jax.random.normal(key, (b, t)) - 3.0
    return logits, {"targets": targets, "mask": mask, "ref_log_probs": ref}


def test_token_loss_at_init_is_mle_value_and_gradient():
    logits, batch = _batch(jax.random.key(0))
    theta = learned.init_token_loss(jax.random.key(1))
    value, metrics = learned.token_loss(theta, logits, batch)
    mle_value, _ = mle.loss((), logits, batch)
    np.testing.assert_allclose(value, mle_value, rtol=1e-6)
    np.testing.assert_allclose(metrics["mean_weight"], 1.0, rtol=1e-6)
    g = jax.grad(lambda l: learned.token_loss(theta, l, batch)[0])(logits)
    g_mle = jax.grad(lambda l: mle.loss((), l, batch)[0])(logits)
    np.testing.assert_allclose(g, g_mle, atol=1e-7)


def _mlp_by_hand(theta, x):
    """The network of learned.py in float64 numpy: w1 . tanh(x w0 + b0) + b1 over x's last axis."""
    p = {k: np.asarray(v, np.float64) for k, v in theta.items()}
    return np.tanh(np.asarray(x, np.float64) @ p["w0"] + p["b0"]) @ p["w1"] + p["b1"]


def test_token_loss_gradient_is_weighted_cross_entropy():
    """Features are held out of the gradient: d loss / d logits = sum w * d nll / d logits."""
    logits, batch = _batch(jax.random.key(2))
    theta = learned.init_token_loss(jax.random.key(3))
    theta = dict(theta, w1=jnp.linspace(-2.0, 2.0, theta["w1"].shape[0]), b1=jnp.array(0.3))
    weights = learned.token_weights(theta, logits, batch, learned.TOKEN_FEATURES)
    # w = 2 sigmoid(g_theta(x)) by hand on the features (checked by hand in
    # test_token_features_by_hand), and the metrics' masked mean and spread of w.
    x = learned.token_features(logits, batch, learned.TOKEN_FEATURES)  # [B, T, F]
    expected = 2.0 / (1.0 + np.exp(-_mlp_by_hand(theta, x)))  # [B, T]
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    mask = np.asarray(batch["mask"], bool)
    assert float(np.std(expected[mask])) > 1e-3  # The weights differ between tokens.
    _, metrics = learned.token_loss(theta, logits, batch)
    np.testing.assert_allclose(metrics["mean_weight"], expected[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["weight_std"], expected[mask].std(), rtol=1e-4)

    def weighted_nll(l):
        nll = -mle.token_log_likelihood(l, batch["targets"])
        return (weights * nll * batch["mask"]).sum() / batch["mask"].sum()

    g = jax.grad(lambda l: learned.token_loss(theta, l, batch)[0])(logits)
    np.testing.assert_allclose(g, jax.grad(weighted_nll)(logits), atol=1e-6)


def test_token_features_by_hand():
    v = 4
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.125, 0.125]] * 4]))  # [1, 4, 4]
    batch = {"targets": jnp.array([[0, 1, 2, 0]]), "mask": jnp.array([[0.0, 1, 1, 1]]),
             "ref_log_probs": jnp.full((1, 4), -10.0)}
    x = learned.token_features(logits, batch, learned.TOKEN_FEATURES)
    col = {name: x[0, :, i] for i, name in enumerate(learned.TOKEN_FEATURES)}
    np.testing.assert_allclose(col["log_prob"], np.log([0.5, 0.25, 0.125, 0.5]) / 5, rtol=1e-5)
    entropy = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 2 * 0.125 * math.log(0.125))
    np.testing.assert_allclose(col["entropy"], entropy / math.log(v), rtol=1e-5)
    np.testing.assert_allclose(col["max_log_prob"], math.log(0.5) / 5, rtol=1e-5)
    np.testing.assert_allclose(col["position"], [0, 0, 1 / 3, 2 / 3], atol=1e-6)
    np.testing.assert_allclose(col["ref_log_prob"], -2.0)
    np.testing.assert_allclose(col["length"], math.log(4) / 4, rtol=1e-6)
    mean = np.mean(np.log([0.25, 0.125, 0.5]) / 5)
    np.testing.assert_allclose(col["answer_log_prob"], mean, rtol=1e-5)


def test_history_features_by_hand():
    """Row 0 was visited twice before with answer_log_prob summing to -0.6 (mean -0.3); row 1
    never. Its answer_log_prob now: mean(log [0.25, 0.125, 0.5]) / 5 (the tokens of
    test_token_features_by_hand), the same in both rows."""
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.125, 0.125]] * 4] * 2))  # [2, 4, 4]
    batch = {"targets": jnp.array([[0, 1, 2, 0]] * 2), "mask": jnp.array([[0.0, 1, 1, 1]] * 2),
             "history_log_prob": jnp.array([-0.3, 0.0]), "history_visits": jnp.array([2.0, 0])}
    now = np.mean(np.log([0.25, 0.125, 0.5]) / 5)
    x = learned.token_features(logits, batch, learned.HISTORY_FEATURES)
    np.testing.assert_allclose(x[0, :, 0], -0.3, rtol=1e-6)  # the mean of its past visits
    np.testing.assert_allclose(x[0, :, 1], now + 0.3, rtol=1e-5)  # moved since
    np.testing.assert_allclose(x[1, :, 0], now, rtol=1e-5)  # first visit: itself
    np.testing.assert_allclose(x[1, :, 1], 0.0, atol=1e-7)
    theta = learned.init_token_loss(jax.random.key(0), learned.HISTORY_FEATURES, hidden=4)
    _, metrics = learned.token_loss(theta, logits, batch, features=learned.HISTORY_FEATURES)
    np.testing.assert_allclose(metrics["row_answer_log_prob"], [now, now], rtol=1e-5)
    assert objectives.build({"name": "learned_token_loss",
                             "features": ("log_prob",) + learned.HISTORY_FEATURES}).needs_history
    assert not objectives.build("learned_token_loss").needs_history  # not among the defaults
    del batch["history_visits"]
    with pytest.raises(errors.UserError, match="only an in-memory inner run keeps"):
        learned.token_features(logits, batch, ("history_trend",))


def test_token_loss_feature_subsets_and_errors():
    logits, batch = _batch(jax.random.key(4))
    del batch["ref_log_probs"]
    theta = learned.init_token_loss(jax.random.key(0), ("log_prob", "position"), hidden=4)
    assert theta["w0"].shape == (2, 4)
    value, _ = jax.jit(lambda t, l: learned.token_loss(t, l, batch,
                                                       features=("log_prob", "position")))(
        theta, logits)
    np.testing.assert_allclose(value, mle.loss((), logits, batch)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="ref_log_probs"):
        learned.token_loss(learned.init_token_loss(jax.random.key(0)), logits, batch)
    with pytest.raises(ValueError, match="features must be distinct"):
        learned.init_token_loss(jax.random.key(0), ("log_prob", "nope"))


def test_progress_feature_by_hand():
    """progress = min(step / run_steps, 1): 200 of 800 steps is 0.25; past the end 1; without a
    step (evaluation) 1. It needs run_steps, and run_steps needs it."""
    logits, batch = _batch(jax.random.key(6))
    for step, expected in ((200, 0.25), (1600, 1.0), (None, 1.0)):
        b = dict(batch) if step is None else dict(batch, step=jnp.asarray(step, jnp.int32))
        x = learned.token_features(logits, b, ("progress",), run_steps=800)
        np.testing.assert_allclose(x[..., 0], expected, rtol=1e-6)
    with pytest.raises(errors.UserError, match="set the objective's run_steps"):
        learned.token_features(logits, batch, ("progress",))
    with pytest.raises(errors.UserError, match="read only by the 'progress' feature"):
        learned.check_token_settings(("log_prob",), "token", 800)
    with pytest.raises(errors.UserError, match="read only by the 'progress' feature"):
        learned.check_token_settings(("progress",), "token", 0)
    with pytest.raises(errors.UserError, match="granularity is 'example'"):
        learned.check_token_settings(("log_prob",), "example", 0)


ROW_FEATURES = ("answer_log_prob", "length", "progress")


def test_row_weights_by_hand():
    """granularity 'row': each row's features averaged over its answer, standardised across
    the rows that have an answer (progress passed as it is), s = 2 sigmoid(g(z)), w = s
    normalised to a token-weighted mean of 1; row 2 has no answer and counts nowhere."""
    logits, batch = _batch(jax.random.key(7))
    batch = dict(batch, step=jnp.asarray(100, jnp.int32))
    theta = learned.init_token_loss(jax.random.key(8), ROW_FEATURES, hidden=5)
    theta = dict(theta, w1=jnp.linspace(-1.5, 2.0, 5), b1=jnp.array(0.2))
    w = learned.token_weights(theta, logits, batch, ROW_FEATURES, "row", run_steps=400)  # [B, T]
    x = np.asarray(learned.token_features(logits, batch, ROW_FEATURES, run_steps=400), np.float64)
    mask = np.asarray(batch["mask"], np.float64)
    n = mask.sum(1)  # [3] = 3, 5, 0
    x_row = (x * mask[..., None]).sum(1)[:2] / n[:2, None]  # rows 0 and 1
    z = (x_row - x_row.mean(0)) / np.sqrt(x_row.var(0) + 1e-6)
    z[:, 2] = 0.25  # progress: 100 / 400, not standardised
    s = 2.0 / (1.0 + np.exp(-_mlp_by_hand(theta, z)))  # [2]
    expected = s * n[:2].sum() / (s * n[:2]).sum()
    np.testing.assert_allclose(w[0], expected[0], rtol=1e-5)  # every token of a row alike
    np.testing.assert_allclose(w[1], expected[1], rtol=1e-5)
    assert abs(expected[0] - expected[1]) > 0.05  # the rows are told apart
    # Token-weighted mean 1 however theta is: Adam cannot undo a scale that is not there.
    _, metrics = learned.token_loss(theta, logits, batch, features=ROW_FEATURES,
                                    granularity="row", run_steps=400)
    np.testing.assert_allclose(metrics["mean_weight"], 1.0, rtol=1e-5)
    # At the initialisation every weight is 1: MLE's value.
    theta0 = learned.init_token_loss(jax.random.key(8), ROW_FEATURES, hidden=5)
    value, _ = learned.token_loss(theta0, logits, batch, features=ROW_FEATURES,
                                  granularity="row", run_steps=400)
    np.testing.assert_allclose(value, mle.loss((), logits, batch)[0], rtol=1e-6)


def test_weights_by_corruption_metrics_by_hand():
    """A diagnosis batch marks its corrupted rows: the mean weight of their answer tokens and of
    the others'."""
    logits, batch = _batch(jax.random.key(9))
    weights = jnp.array([[1.0, 2, 3, 4, 5, 6], [0.5] * 6, [9.0] * 6])
    batch = dict(batch, corrupted=jnp.array([1.0, 0.0, 1.0]))
    _, metrics = learned.weighted_nll(weights, logits, batch)
    np.testing.assert_allclose(metrics["weight_noisy"], (3 + 4 + 5) / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["weight_clean"], 0.5, rtol=1e-6)
    assert np.isnan(learned.weighted_nll(weights, logits, dict(batch, corrupted=jnp.zeros(3)))[1][
        "weight_noisy"])


def test_row_settings_through_build_and_the_artifact(tmp_path):
    """granularity and run_steps reach the loss from the config and from an artifact; a config
    that names other ones than its artifact's is refused."""
    logits, batch = _batch(jax.random.key(10))
    del batch["ref_log_probs"]
    cfg = {"name": "learned_token_loss", "features": ROW_FEATURES, "hidden": 5,
           "granularity": "row", "run_steps": 400}
    built = objectives.build(cfg)
    theta = dict(built.theta, w1=jnp.linspace(-1.5, 2.0, 5))
    expected = learned.token_loss(theta, logits, batch, features=ROW_FEATURES, granularity="row",
                                  run_steps=400)[0]
    np.testing.assert_allclose(built.loss(theta, logits, batch)[0], expected, rtol=1e-6)
    assert not np.isclose(float(expected), float(learned.token_loss(
        theta, logits, batch, features=ROW_FEATURES, run_steps=400)[0]), rtol=1e-4)
    path = str(tmp_path / "artifact")
    artifact.save(path, "learned_token_loss", theta,
                  {"features": list(ROW_FEATURES), "hidden": 5, "granularity": "row",
                   "run_steps": 400}, {})
    loaded = objectives.build({"name": "learned_token_loss", "path": path})
    np.testing.assert_allclose(loaded.loss(loaded.theta, logits, batch)[0], expected, rtol=1e-6)
    with pytest.raises(errors.UserError, match="the artifact decides them"):
        objectives.build({"name": "learned_token_loss", "path": path, "granularity": "token"})
    with pytest.raises(errors.UserError, match="granularity is 'rows'"):
        objectives.build(dict(cfg, granularity="rows"))


def test_preference_loss_at_init_is_dpo():
    key = jax.random.split(jax.random.key(5), 4)
    logps = [jax.random.normal(k, (7,)) * 3 for k in key]
    theta = learned.init_preference_loss(jax.random.key(6))
    ours = lambda *a: learned.preference_loss(theta, *a, beta=0.2)[0]
    theirs = lambda *a: dpo.loss(*a, beta=0.2)[0]
    np.testing.assert_allclose(ours(*logps), theirs(*logps), rtol=1e-6)
    for i in range(4):
        np.testing.assert_allclose(jax.grad(ours, argnums=i)(*logps),
                                   jax.grad(theirs, argnums=i)(*logps), atol=1e-7)
    # Off its initialisation the loss is mean_pairs(-log sigmoid(x) + h(x / 4)), x = beta delta.
    moved = dict(theta, w1=jnp.ones_like(theta["w1"]), b1=jnp.array(-0.2))
    chosen, rejected, ref_chosen, ref_rejected = (np.asarray(l, np.float64) for l in logps)
    x = 0.2 * ((chosen - ref_chosen) - (rejected - ref_rejected))  # [7]
    f = np.log1p(np.exp(-x)) + _mlp_by_hand(moved, x[:, None] / 4.0)
    np.testing.assert_allclose(learned.preference_loss(moved, *logps, beta=0.2)[0], f.mean(),
                               rtol=1e-5)
    x = jnp.linspace(-5, 5, 11)
    np.testing.assert_allclose(learned.preference_curve(theta, x), -jax.nn.log_sigmoid(x),
                               rtol=1e-6)


def test_reward_at_init_is_the_reward_model_score():
    theta = learned.init_reward(jax.random.key(7))
    score = jnp.array([0.5, -1.0, 2.0])
    length, finished = jnp.array([3, 9, 1]), jnp.array([True, False, True])
    np.testing.assert_allclose(learned.reward(theta, score, length, finished), score)
    moved = dict(theta, b1=jnp.array(0.25))
    np.testing.assert_allclose(learned.reward(moved, score, length, finished), score + 0.25)


def test_build_names_and_errors(tmp_path):
    assert objectives.build("mle").theta == ()
    assert not objectives.build("mle").needs_reference
    built = objectives.build(objective_configs.objective_config("learned_token_loss"))
    assert built.needs_reference and built.theta["w0"].shape == (7, 32)
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        objectives.build("nope")
    with pytest.raises(artifact.ArtifactError, match="no learned-objective artifact"):
        objectives.build({"name": "learned_token_loss", "path": str(tmp_path / "missing")})


def test_artifact_round_trip_corruption_and_name(tmp_path):
    path = str(tmp_path / "artifact")
    theta = dict(learned.init_token_loss(jax.random.key(0), ("log_prob",), hidden=3),
                 b1=jnp.array(0.7))
    artifact.save(path, "learned_token_loss", theta, {"features": ["log_prob"], "hidden": 3},
                  {"seed": 0}, {"git": "abc"})
    built = objectives.build({"name": "learned_token_loss", "path": path})
    assert not built.needs_reference
    # Every array comes back bit for bit (not only the one this test set).
    assert sorted(built.theta) == sorted(theta)
    for name in theta:
        np.testing.assert_array_equal(built.theta[name], theta[name])
    assert artifact.load(path).config == {"seed": 0}
    with pytest.raises(artifact.ArtifactError, match="not 'other'"):
        artifact.load(path, expected_name="other")
    # A second save replaces the first completely; no temporary folder is left behind.
    artifact.save(path, "learned_token_loss", dict(theta, b1=jnp.array(-1.0)),
                  {"features": ["log_prob"], "hidden": 3}, {"seed": 1})
    assert float(artifact.load(path).theta["b1"]) == -1.0
    assert sorted(os.listdir(tmp_path)) == ["artifact"]
    with open(os.path.join(path, artifact.THETA), "r+b") as f:
        f.seek(40)
        f.write(b"\x00\x01\x02")
    with pytest.raises(artifact.ArtifactError, match="corrupt artifact"):
        artifact.load(path)


def test_reference_log_probs_come_from_the_reference_params():
    cfg = model_lib.ModelConfig(vocab_size=16, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                                max_len=8)
    model = model_lib.build(cfg)
    inputs = jnp.array([[1, 2, 3, 4, 5, 6]])
    params = model.init(jax.random.key(0), inputs)
    reference = model.init(jax.random.key(1), inputs)
    batch = {"inputs": inputs, "targets": jnp.roll(inputs, -1, axis=1),
             "mask": jnp.array([[0.0, 0, 1, 1, 1, 0]])}
    seen = {}

    def spy(theta, logits, b):
        seen.update(b)
        return mle.loss(theta, logits, b)

    objective = objectives.Objective("spy", spy, (), needs_reference=True)
    loss_fn = train.objective_loss(model, objective)
    theta = train.step_theta(objective, reference)
    loss_fn(params, batch, theta)
    expected = mle.token_log_likelihood(model.apply(reference, inputs).logits, batch["targets"])
    np.testing.assert_allclose(seen["ref_log_probs"], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="reference params"):
        train.step_theta(objective)


def test_objective_flag_takes_a_name_then_fields(tmp_path):
    config_file = tmp_path / "c.py"
    config_file.write_text(
        "import ml_collections\n"
        "from configs import objectives\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.objective = objectives.objective_config()\n"
        "    return c\n")
    def parse(*overrides):
        argv = ["prog", f"--config={config_file}", *overrides]
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True,
                                        sys_argv=argv)
        values(argv)
        return values.config

    cfg = parse("--config.objective=learned_token_loss", "--config.objective.path=/artifact")
    assert (cfg.objective.name, cfg.objective.path, cfg.objective.hidden) == (
        "learned_token_loss", "/artifact", 32)
    assert parse().objective.name == "mle"
    with pytest.raises(flags.IllegalFlagValueError, match="unknown objective 'bogus'"):
        parse("--config.objective=bogus")
