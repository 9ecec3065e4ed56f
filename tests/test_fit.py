"""The one engine of in-memory training (learned_loss/meta/fit.py) and the one optimizer factory
(learned_loss/core/train.py), on a problem small enough to check by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from learned_loss.core import errors, train
from learned_loss.meta import base, fit


def _problem(target):
    """Inner runs that move x toward `target` ([] float) by plain gradient steps of size 0.1
    on (x - target)^2 * theta; each step also adds the key's first uniform draw / 1000, so
    that the keys a run uses show in its result."""

    def init(key):
        return {"x": jax.random.uniform(key), "step": jnp.zeros((), jnp.int32)}

    def step(theta, inner, key):
        grad = 2.0 * (inner["x"] - target) * theta
        noise = jax.random.uniform(key) / 1000.0
        return {"x": inner["x"] - 0.1 * grad + noise, "step": inner["step"] + 1}

    return base.InnerProblem(init=init, step=step,
                             meta_loss=lambda inner, key: (inner["x"] - target) ** 2)


def test_fit_over_seeds_is_each_seed_run_alone():
    runner = fit.plain(_problem)
    targets = jnp.array([1.0, -2.0, 3.0])  # One seed's data each.
    keys = fit.seed_keys([0, 1, 2])
    carry = fit.fit(runner, jnp.float32(1.0), keys, targets, 20)
    inners = fit.unstack(runner.inner(carry), 3)
    for s, target in enumerate(targets):
        alone = fit.fit_one(runner, jnp.float32(1.0), jax.random.key(s), target, 20)
        assert float(runner.inner(alone)["x"]) == pytest.approx(float(inners[s]["x"]),
                                                               abs=1e-6)
        assert int(inners[s]["step"]) == 20
        # 20 steps of x <- x - 0.2 (x - t) + noise: within 0.8^20 plus the noise of t.
        assert abs(float(inners[s]["x"]) - float(target)) < 0.1
    assert len({round(float(i["x"]), 4) for i in inners}) == 3


def test_runs_of_one_runner_share_one_program():
    """fit's programs are module-level with the runner static: another run of the same runner
    and shapes (other seeds, data, theta and shared values) compiles nothing new."""
    runner = fit.plain(lambda data: _problem(data[0] + data[1]))
    count = fit._whole._cache_size()  # pylint: disable=protected-access
    first = fit.fit(runner, jnp.float32(1.0), fit.seed_keys([0, 1]), jnp.array([1.0, 2.0]), 5,
                    shared=jnp.float32(0.0))
    fit.fit(runner, jnp.float32(2.0), fit.seed_keys([3, 4]), jnp.array([3.0, 4.0]), 5,
            shared=jnp.float32(1.0))
    moved = fit.fit(runner, jnp.float32(1.0), fit.seed_keys([0, 1]), jnp.array([1.0, 2.0]), 5,
                    shared=jnp.float32(1.0))
    assert fit._whole._cache_size() == count + 1  # pylint: disable=protected-access
    # The shared value is an argument, not a constant of the first run: targets moved by 1.
    assert not np.array_equal(runner.inner(first)["x"], runner.inner(moved)["x"])


def test_equal_optimizer_configs_give_one_optimizer():
    """So that the programs built from it (steps, state initialisers) are compiled once."""
    config = _adam(name="adamw", weight_decay=0.1)
    assert train.make_optimizer(config, 10) is train.make_optimizer(dict(config), 10)
    assert train.make_optimizer(config, 10) is not train.make_optimizer(config, 20)
    assert train.make_optimizer(config) is not train.make_optimizer(dict(config, lr=0.5))


def test_segments_call_back_between_spans_and_train_the_same_number_of_steps():
    runner = fit.plain(_problem)
    seen = []
    carry = fit.fit(runner, jnp.float32(1.0), fit.seed_keys([0, 1]), jnp.array([1.0, 2.0]), 10,
                    segments=3, on_segment=lambda step, c: seen.append(
                        (step, runner.inner(c)["step"].tolist())))
    assert seen == [(3, [3, 3]), (7, [7, 7])]  # round(10 i / 3); none after the last span.
    assert runner.inner(carry)["step"].tolist() == [10, 10]
    whole = fit.fit(runner, jnp.float32(1.0), fit.seed_keys([0, 1]), jnp.array([1.0, 2.0]), 10)
    # Segments draw their own keys (module docstring): the same steps, another run.
    assert not np.array_equal(runner.inner(whole)["x"], runner.inner(carry)["x"])
    with pytest.raises(ValueError, match="at least one segment"):
        fit.bounds(10, 0)


def test_theta_is_an_argument_of_the_program():
    runner = fit.plain(_problem)
    keys, data = fit.seed_keys([0]), jnp.array([1.0])
    frozen = runner.inner(fit.fit(runner, jnp.float32(0.0), keys, data, 5))
    moving = runner.inner(fit.fit(runner, jnp.float32(1.0), keys, data, 5))
    start = runner.inner(fit.fit(runner, jnp.float32(0.0), keys, data, 0))
    # theta = 0: only the noise moves x (5 draws of at most 1/1000).
    assert 0.0 <= float(frozen["x"][0] - start["x"][0]) <= 5e-3
    assert abs(float(moving["x"][0]) - 1.0) < abs(float(frozen["x"][0]) - 1.0)


def _adam(**over):
    return dict(train.constant_adam(1e-2), **over)


def test_the_factory_matches_optax_adam_and_adamw():
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    grads = {"w": jnp.full((3, 4), 0.3), "b": jnp.full(4, -0.2)}
    cases = [
        (train.make_optimizer(train.constant_adam(1e-2), differentiable=True),
         optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adam(1e-2, b1=0.9, b2=0.99, eps=1e-8, eps_root=1e-8))),
        (train.make_optimizer(_adam(name="adamw", weight_decay=0.1)),
         optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(1e-2, b1=0.9, b2=0.99, eps=1e-8, eps_root=1e-8,
                                 weight_decay=0.1, mask={"w": True, "b": False}))),
    ]
    for ours, theirs in cases:
        a, b = ours.init(params), theirs.init(params)
        assert jax.tree.structure(a) == jax.tree.structure(b)  # Checkpoints keep their layout.
        for _ in range(3):
            ua, a = ours.update(grads, a, params)
            ub, b = theirs.update(grads, b, params)
            for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)):
                np.testing.assert_array_equal(x, y)


def test_the_factory_refuses_what_it_cannot_honour():
    with pytest.raises(errors.UserError, match="eps_root=0.0 makes adam's update"):
        train.make_optimizer(_adam(eps_root=0.0), differentiable=True)
    train.make_optimizer(_adam(eps_root=0.0))  # Fine when nothing differentiates through it.
    with pytest.raises(errors.UserError, match="optimizer.name='sgd'"):
        train.make_optimizer(_adam(name="sgd"))
    with pytest.raises(errors.UserError, match="optimizer.schedule='linear'"):
        train.make_optimizer(_adam(schedule="linear"))
