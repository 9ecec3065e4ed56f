"""Interpretation of learned objectives: closed-form fits, their artifacts, the plots."""

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from learned_loss import objectives
from learned_loss.core import model as model_lib
from learned_loss.meta import interpret
from learned_loss.data import training_rows
from learned_loss.objectives import learned, mle


def _table(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    return {"log_prob": -rng.uniform(0, 2, n), "answer_log_prob": -rng.uniform(0, 2, n),
            "position": rng.uniform(0, 1, n), "corrupted": rng.uniform(size=n) < 0.3,
            "example": np.arange(n) // 4}


def test_fits_recover_a_known_closed_form_and_choose_the_simplest():
    table = _table()
    z = 0.4 + 1.5 * table["answer_log_prob"] - 0.7 * table["log_prob"]
    weights = 2.0 / (1.0 + np.exp(-z))
    fits = interpret.fit_closed_forms(table, weights)
    by_form = {f["form"]: f for f in fits}
    assert by_form["token_answer"]["r2"] > 0.9999
    np.testing.assert_allclose(by_form["token_answer"]["theta"]["coef"], [-0.7, 1.5], atol=1e-3)
    np.testing.assert_allclose(by_form["token_answer"]["theta"]["bias"], 0.4, atol=1e-3)
    assert by_form["constant"]["r2"] == pytest.approx(0.0, abs=1e-6)
    assert by_form["answer"]["r2"] < 0.99
    # token_answer_position fits as well but has one more feature.
    assert interpret.choose(fits)["form"] == "token_answer"


def test_closed_form_artifact_is_a_token_loss(tmp_path):
    fit = {"form": "answer", "features": ["answer_log_prob"],
           "theta": {"bias": 0.3, "coef": [2.0]}, "mse": 0.0, "r2": 1.0}
    path = str(tmp_path / "closed")
    interpret.save_closed_form(path, fit, "somewhere")
    objective = objectives.build({"name": "learned_token_loss", "path": path})
    assert not objective.needs_reference
    key = jax.random.key(0)
    logits = jax.random.normal(key, (2, 5, 7))
    batch = {"targets": jnp.array([[1, 2, 3, 4, 5], [0, 1, 2, 3, 4]]),
             "mask": jnp.array([[0.0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])}
    value, metrics = objective.loss(objective.theta, logits, batch)
    x = learned.token_features(logits, batch, ("answer_log_prob",))[..., 0]
    w = 2.0 / (1.0 + jnp.exp(-(0.3 + 2.0 * x)))
    nll = -mle.token_log_likelihood(logits, batch["targets"])
    np.testing.assert_allclose(value, (w * nll * batch["mask"]).sum() / batch["mask"].sum(),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="unknown closed form"):
        learned.closed_form_loss(objective.theta, logits, batch, form="nope")


def test_token_table_and_plots(tmp_path):
    cfg = model_lib.ModelConfig(vocab_size=260, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                                max_len=8)
    model = model_lib.build(cfg)
    rng = np.random.default_rng(0)
    mask = np.zeros((5, 8), np.float32)
    mask[:, 5:7] = 1.0
    mask[2, 4] = 1.0
    rows = training_rows.Demonstrations(
        inputs=rng.integers(4, 200, (5, 8)).astype(np.int32),
        targets=rng.integers(4, 200, (5, 8)).astype(np.int32), mask=mask,
        corrupted=np.array([False, True, False, False, True]))
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    features = ("log_prob", "answer_log_prob", "ref_log_prob")
    table = interpret.token_table(model, params, rows, features, reference=params,
                                  batch_size=2)
    assert len(table["log_prob"]) == int(mask.sum()) == 11
    np.testing.assert_array_equal(table["corrupted"], rows.corrupted[table["example"]])
    np.testing.assert_allclose(table["ref_log_prob"], table["log_prob"], rtol=1e-5)
    theta = dict(learned.init_token_loss(jax.random.key(1), features, hidden=4),
                 w1=jnp.ones(4))
    weights = interpret.network_weights(theta, table, features)
    # 2 sigmoid(w1 . tanh(x w0 + b0) + b1) by hand on the table's columns, in `features` order.
    x = np.stack([table[name] for name in features], axis=-1).astype(np.float64)  # [11, 3]
    p = {k: np.asarray(v, np.float64) for k, v in theta.items()}
    g = np.tanh(x @ p["w0"] + p["b0"]) @ p["w1"] + p["b1"]  # [11]
    assert weights.shape == (11,)
    np.testing.assert_allclose(weights, 2.0 / (1.0 + np.exp(-g)), rtol=1e-5)
    png = interpret.plot_token_loss(table, weights, None, str(tmp_path / "t.png"))
    assert matplotlib.image.imread(png).shape[2] in (3, 4)
    pref = learned.init_preference_loss(jax.random.key(2))
    png = interpret.plot_preference_loss(pref, str(tmp_path / "p.png"))
    assert matplotlib.image.imread(png).shape[0] > 100
