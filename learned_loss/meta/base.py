"""What every meta-gradient estimator shares: the inner problem, unrolls, particles, shaping.

An estimator is a pair of pure functions

    init(theta, key) -> state
    estimate(theta, state, key) -> (grad, state, metrics)

where theta is the outer parameters (any pytree) and grad has theta's structure: an estimate of
d meta-loss / d theta (a descent direction for the outer optax optimizer, which never knows which
estimator it holds). Estimators are built over an `InnerProblem`:

    init(key) -> inner             a fresh inner run (model parameters, optimizer state, data
                                   position...), any pytree
    step(theta, inner, key) -> inner      one inner training step under the objective theta
    meta_loss(inner, key) -> []    the outer objective of an inner run's current state (e.g. the
                                   validation negative log-likelihood of the model)

An inner run is unrolled K steps at a time (`unroll`); the meta-loss is read at the end of the
unroll. A run is truncated: it lives across outer steps until it reaches its horizon, then a
fresh one starts. Horizons follow a `TruncationSchedule`; the first horizon of each particle is
drawn uniformly below its full horizon so that particles do not all reset together
(desynchronised offsets, as in learned_optimization's truncated steps).

Non-finite meta-losses (an inner run that diverged) never reach the outer update: estimators
score them as failures and restart the run (see each estimator).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class InnerProblem:
    """A family of inner training runs whose outcome depends on theta (module docstring)."""

    init: Callable[[jax.Array], Any]
    step: Callable[[Any, Any, jax.Array], Any]
    meta_loss: Callable[[Any, jax.Array], jax.Array]


class Estimator(NamedTuple):
    init: Callable[[Any, jax.Array], Any]
    estimate: Callable[[Any, Any, jax.Array], tuple[Any, Any, dict]]


@dataclasses.dataclass(frozen=True)
class TruncationSchedule:
    """Inner runs of `min_horizon`..`max_horizon` steps (log-uniform between them), unrolled
    `unroll_length` steps at a time. min_horizon == max_horizon gives a fixed horizon."""

    unroll_length: int
    min_horizon: int
    max_horizon: int

    def __post_init__(self):
        if not 0 < self.unroll_length <= self.min_horizon <= self.max_horizon:
            raise ValueError(f"need 0 < unroll_length <= min_horizon <= max_horizon, got "
                             f"{self.unroll_length}, {self.min_horizon}, {self.max_horizon}")

    def sample(self, key: jax.Array, shape=()) -> jax.Array:
        """Horizons [shape] int32, rounded up to whole unrolls."""
        lo, hi = math.log(self.min_horizon), math.log(self.max_horizon)
        h = jnp.exp(jax.random.uniform(key, shape, minval=lo, maxval=hi))
        k = self.unroll_length
        return (jnp.ceil(h / k) * k).astype(jnp.int32)


def unroll(problem: InnerProblem, theta: Any, inner: Any, key: jax.Array, num_steps: int, *,
           remat: bool = False) -> tuple[Any, jax.Array]:
    """`num_steps` inner steps (a lax.scan), then the meta-loss. Returns (inner, loss []).

    remat: rematerialise each inner step in the backward pass (jax.checkpoint): memory O(1)
    in the step's activations instead of O(num_steps), at the cost of a second forward pass.
    """
    step = jax.checkpoint(problem.step) if remat else problem.step

    def body(carry, k):
        return step(theta, carry, k), None

    inner, _ = jax.lax.scan(body, inner, step_keys(key, num_steps))
    return inner, problem.meta_loss(inner, jax.random.split(key)[1])


def step_keys(key: jax.Array, num_steps: int) -> jax.Array:
    """[num_steps] keys of the steps of an unroll from `key` (its meta-loss reads the second
    half of split(key)). A run keyed the same way elsewhere takes the same batches:
    experiments/finetune.py's 'uniform' sampler."""
    return jax.random.split(jax.random.split(key)[0], num_steps)


class Particles(NamedTuple):
    """N truncated inner runs, stacked on a leading axis."""

    inner: Any  # pytree, leaves [N, ...]
    step: jax.Array  # [N] int32: inner steps taken in the current run
    horizon: jax.Array  # [N] int32: the current run's length


def init_particles(problem: InnerProblem, schedule: TruncationSchedule, key: jax.Array,
                   num: int) -> Particles:
    """Fresh runs with desynchronised first horizons (uniform in whole unrolls up to each
    particle's sampled horizon)."""
    init_key, horizon_key, offset_key = jax.random.split(key, 3)
    inner = jax.vmap(problem.init)(jax.random.split(init_key, num))
    full = schedule.sample(horizon_key, (num,))
    unrolls = full // schedule.unroll_length
    first = (jax.random.randint(offset_key, (num,), 0, unrolls) + 1) * schedule.unroll_length
    return Particles(inner, jnp.zeros((num,), jnp.int32), first)


def reset_finished(problem: InnerProblem, schedule: TruncationSchedule, particles: Particles,
                   key: jax.Array, fresh_inner: Any = None) -> tuple[Particles, jax.Array]:
    """Particles whose run reached its horizon start a fresh one. Returns (particles, done [N])."""
    num = particles.step.shape[0]
    init_key, horizon_key = jax.random.split(key)
    if fresh_inner is None:
        fresh_inner = jax.vmap(problem.init)(jax.random.split(init_key, num))
    done = particles.step >= particles.horizon  # [N]
    inner = select(done, fresh_inner, particles.inner)
    horizon = jnp.where(done, schedule.sample(horizon_key, (num,)), particles.horizon)
    return Particles(inner, jnp.where(done, 0, particles.step), horizon), done


def select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Per leading index: on_true[i] where pred[i] else on_false[i]. pred: [N] bool."""

    def pick(a, b):
        return jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, on_true, on_false)


def all_finite(tree: Any) -> jax.Array:
    """[] bool: every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def finite_mean(x: jax.Array) -> jax.Array:
    """[] the mean of the finite elements of x (0 when none is)."""
    finite = jnp.isfinite(x)
    return jnp.sum(jnp.where(finite, x, 0.0)) / jnp.maximum(finite.sum(), 1)


# ---- fitness shaping (evolution strategies) ---------------------------------------------------


def centered_ranks(losses: jax.Array) -> jax.Array:
    """[n] losses -> [n] ranks scaled to [-0.5, 0.5] (Salimans et al. 2017): the highest loss
    gets 0.5. Non-finite losses rank as the worst (highest). Ties are broken by index."""
    worst = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    ranks = jnp.argsort(jnp.argsort(worst)).astype(jnp.float32)
    n = losses.shape[0]
    return ranks / jnp.maximum(n - 1, 1) - 0.5


def z_scores(losses: jax.Array) -> jax.Array:
    """[n] -> [n] (losses - mean) / std, non-finite losses first replaced by the worst finite
    one (0 everywhere when they are all equal or none is finite)."""
    finite = jnp.isfinite(losses)
    worst = jnp.max(jnp.where(finite, losses, -jnp.inf))
    filled = jnp.where(finite, losses, jnp.where(jnp.isfinite(worst), worst, 0.0))
    std = jnp.std(filled)
    return jnp.where(std > 0, (filled - filled.mean()) / jnp.maximum(std, 1e-12), 0.0)


def antithetic_differences(plus: jax.Array, minus: jax.Array, shaping: str,
                           clip: float) -> jax.Array:
    """[P] shaped (f(theta + eps_i) - f(theta - eps_i)) / 2 from [P] losses of each side.

    shaping: 'rank' (centered ranks over all 2P losses), 'zscore', or 'none' (raw losses, a
    non-finite one replaced by the worst finite loss). `clip > 0` clips the raw or z-scored
    differences to [-clip, clip]; ranks are bounded already. A pair with both losses non-finite
    contributes 0.
    """
    both = jnp.concatenate([plus, minus])  # [2P]
    if shaping == "rank":
        shaped = centered_ranks(both)
    elif shaping == "zscore":
        shaped = z_scores(both)
    elif shaping == "none":
        finite = jnp.isfinite(both)
        worst = jnp.max(jnp.where(finite, both, -jnp.inf))
        shaped = jnp.where(finite, both, jnp.where(jnp.isfinite(worst), worst, 0.0))
    else:
        raise ValueError(f"fitness shaping must be 'rank', 'zscore' or 'none', got {shaping!r}")
    n = plus.shape[0]
    diff = (shaped[:n] - shaped[n:]) / 2.0  # [P]
    # A pair whose members both failed says nothing about the direction.
    diff = jnp.where(jnp.isfinite(plus) | jnp.isfinite(minus), diff, 0.0)
    if clip > 0 and shaping != "rank":
        diff = jnp.clip(diff, -clip, clip)
    return diff


# ---- the population axis ----------------------------------------------------------------------


def population_vmap(fn: Callable, mesh: jax.sharding.Mesh | None, in_axes=0) -> Callable:
    """vmap over a population, sharded over the mesh's `pop` axis when it has one.

    `spmd_axis_name` makes every sharding constraint inside `fn` (e.g. an inner batch over
    `data`) also split the population dimension over `pop`.
    """
    if mesh is None or "pop" not in mesh.axis_names:
        return jax.vmap(fn, in_axes=in_axes)
    return jax.vmap(fn, in_axes=in_axes, spmd_axis_name="pop")


def shard_population(tree: Any, mesh: jax.sharding.Mesh | None) -> Any:
    """Constrains the leading (population) axis of every leaf to the mesh's `pop` axis."""
    if mesh is None or "pop" not in mesh.axis_names:
        return tree
    size = mesh.shape["pop"]

    def constrain(x):
        if x.ndim == 0 or x.shape[0] % size:
            return x
        spec = P("pop", *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))

    return jax.tree.map(constrain, tree)


def population_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """A NamedSharding for every leaf of a (possibly abstract) outer state: the leading
    (population) axis over the mesh's `pop` axis where it divides, like `shard_population`;
    everything else, and every leaf of a mesh without `pop`, replicated. With it a chip holds
    only its own members' inner runs (what lets a pod hold a large model's population)."""
    size = mesh.shape.get("pop", 1)

    def place(x):
        if size > 1 and x.ndim and x.shape[0] % size == 0:
            return jax.sharding.NamedSharding(mesh, P("pop", *([None] * (x.ndim - 1))))
        return jax.sharding.NamedSharding(mesh, P())

    return jax.tree.map(place, tree)
