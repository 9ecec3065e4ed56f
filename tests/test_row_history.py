"""Each training row's history in an in-memory run (learned_loss/meta/lm_problem.py): what the
learned token loss's history features read (learned_loss/objectives/learned.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import models
from learned_loss import objectives
from learned_loss.core import train
from learned_loss.core import model as model_lib
from learned_loss.data import training_rows
from learned_loss.meta import lm_problem
from learned_loss.objectives import learned


def test_history_sums_each_rows_answer_log_prob_over_its_visits():
    """Three steps of batch 4 over 5 rows: every visit adds the row's answer_log_prob under
    the parameters of that step (the step's metrics), and the next batch reads the mean."""
    cfg = models.model_config("nano", max_len=8)
    cfg.update(d_model=16, num_layers=1, num_heads=2, d_ff=32)
    model = model_lib.build(model_lib.ModelConfig.from_config(cfg))
    rng = np.random.default_rng(0)
    inputs = rng.integers(4, 200, (5, 8)).astype(np.int32)
    mask = np.zeros((5, 8), np.float32)
    mask[:, 5:] = 1.0
    rows = training_rows.Demonstrations(inputs, np.roll(inputs, -1, 1), mask, np.zeros(5, bool))
    objective = objectives.build({"name": "learned_token_loss",
                                  "features": ("log_prob",) + learned.HISTORY_FEATURES})
    problem = lm_problem.lm_problem(model, train.make_optimizer(train.constant_adam(1e-2), 3,
                                                                differentiable=True),
                                    objective, rows, rows, batch_size=4, valid_batch_size=4,
                                    seq_len=8)
    inner = problem.init(jax.random.key(0))
    step = jax.jit(problem.step)
    expected_sum, expected_visits = np.zeros(5), np.zeros(5)
    for t in range(3):
        key = jax.random.key(10 + t)
        index = np.asarray(training_rows.draw_index(key, 5, 4))
        inner = step(objective.theta, inner, key)
        np.add.at(expected_sum, index, np.asarray(inner["metrics"]["row_answer_log_prob"]))
        np.add.at(expected_visits, index, 1.0)
    np.testing.assert_allclose(inner["history"]["visits"], expected_visits)
    np.testing.assert_allclose(inner["history"]["sum"], expected_sum, rtol=1e-6)
    assert expected_visits.sum() == 12 and (expected_sum <= 0).all()
    read = lm_problem.history_of(inner["history"], jnp.arange(5))
    seen = expected_visits > 0
    np.testing.assert_allclose(read["history_log_prob"][seen],
                               expected_sum[seen] / expected_visits[seen], rtol=1e-6)
    # An objective without history features carries none.
    plain = lm_problem.lm_problem(model, train.make_optimizer(train.constant_adam(1e-2), 3),
                                  objectives.build("mle"), rows, rows, batch_size=4,
                                  valid_batch_size=4, seq_len=8)
    assert "history" not in plain.init(jax.random.key(0))
