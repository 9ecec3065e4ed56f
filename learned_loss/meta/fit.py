"""The one engine of in-memory training: inner problems trained to the end, over seeds.

An in-memory training run (a token-level cell of the comparison, a study's cell, an emergence
size, the SFT reference of preference meta-training) is an inner problem (`base.InnerProblem`:
`init`, `step`, `meta_loss`) trained for a number of steps under a fixed objective theta. `fit`
runs S of them, one per seed, as one compiled program mapped over the seeds (one after another):
each seed its own data, initialisation and batches, and the arithmetic of a run trained alone.
A run can be cut into segments, with a callback between them (learning curves, evaluations).

Keys: seed s's key splits into (init key, run key); a run in one segment unrolls all its steps
from the run key (`base.unroll`), a run in G segments splits the run key into G and unrolls
segment g from the g-th. So a run in several segments differs from a run in one.

A `Runner` says what is carried between steps. `plain(problem_of)` carries theta (fixed) and
the inner state; another runner can carry more (online meta-weighting updates theta and carries
its optimizer state too: `outer.online_runner`). Theta enters the program as an argument, never
as a constant, so a learned loss's weights are not folded into the compiled program.

Programs: one per runner, step count and shapes. The jitted functions are module-level and
take the runner as a static argument, so runs of an equal runner (the same object, or equal
fields: a caller that builds its runner once per settings, as studies/token_arms.py does) reuse
the compiled program. What every seed reads alike, such as the parameters every run starts
from, goes in `shared`: an argument of the program, not a constant folded into it.

Shapes: S seeds (leading axis of every per-seed array and state).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from learned_loss.meta import base

ProblemOf = Callable[[Any], base.InnerProblem]  # a seed's data -> its inner problem


@dataclasses.dataclass(frozen=True)
class Runner:
    """What a run carries between steps, for one seed (mapped over the seeds by `fit`).

    init(theta, init_key, data) -> carry;  advance(carry, run_key, data, num_steps) -> carry;
    inner(carry) -> the inner state ({'params', 'opt_state', 'step', ...}).
    """

    init: Callable[[Any, jax.Array, Any], Any]
    advance: Callable[[Any, jax.Array, Any, int], Any]
    inner: Callable[[Any], Any]


def plain(problem_of: ProblemOf) -> Runner:
    """Training under a fixed objective theta: the carry is (theta, inner state)."""

    def init(theta, init_key, data):
        return theta, problem_of(data).init(init_key)

    def advance(carry, run_key, data, num_steps):
        theta, inner = carry
        return theta, base.unroll(problem_of(data), theta, inner, run_key, num_steps)[0]

    return Runner(init=init, advance=advance, inner=lambda carry: carry[1])


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    """[S, 2] keys: (init key, run key) of each seed."""
    return jnp.stack([jax.random.split(jax.random.key(s)) for s in seeds])


def bounds(steps: int, segments: int) -> list[int]:
    """The step at which each of `segments` near-equal spans of a run ends, with 0 first."""
    if segments < 1:
        raise ValueError(f"a run needs at least one segment, got {segments}")
    return [round(steps * i / segments) for i in range(segments + 1)]


def fit(runner: Runner, theta: Any, keys: jax.Array, data: Any, steps: int, *,
        segments: int = 1, on_segment: Optional[Callable[[int, Any], None]] = None,
        shared: Any = None) -> Any:
    """Trains S runs from objective `theta` for `steps` steps, one per row of `keys` ([S, 2]
    from `seed_keys`), seed s on `data`'s s-th slice (every leaf [S, ...]). After each segment
    but the last, `on_segment(step, carry)` sees the stacked carries. Returns the stacked final
    carries (`runner.inner` of one is its inner state).

    shared: a pytree that every seed reads alike (no seed axis); when given, the runner's data
    is (the seed's slice, shared)."""
    # Seeds one after another (lax.map), each the program of a run trained alone: a seed's numbers
    # are bitwise those of the same run alone or in experiments/finetune.py, which a vmap over
    # the seeds would change (batched matmuls round differently).
    if segments == 1:
        return _whole(runner, theta, (keys[:, 0], keys[:, 1], data), shared, steps)
    ends = bounds(steps, segments)
    segment_keys = jax.vmap(lambda k: jax.random.split(k, segments))(keys[:, 1])  # [S, G]
    carry = _init(runner, theta, (keys[:, 0], data), shared)
    for g in range(segments):
        carry = _span(runner, (carry, segment_keys[:, g], data), shared, ends[g + 1] - ends[g])
        if on_segment is not None and g < segments - 1:
            on_segment(ends[g + 1], carry)
    return carry


def _with_shared(data: Any, shared: Any) -> Any:
    return data if shared is None else (data, shared)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _whole(runner: Runner, theta: Any, xs: Any, shared: Any, steps: int) -> Any:
    def one(x):
        init_key, run_key, data = x
        data = _with_shared(data, shared)
        return runner.advance(runner.init(theta, init_key, data), run_key, data, steps)

    return jax.lax.map(one, xs)


@functools.partial(jax.jit, static_argnums=0)
def _init(runner: Runner, theta: Any, xs: Any, shared: Any) -> Any:
    return jax.lax.map(lambda x: runner.init(theta, x[0], _with_shared(x[1], shared)), xs)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _span(runner: Runner, xs: Any, shared: Any, num_steps: int) -> Any:
    def one(x):
        carry, run_key, data = x
        return runner.advance(carry, run_key, _with_shared(data, shared), num_steps)

    return jax.lax.map(one, xs)


def unstack(tree: Any, count: int) -> list[Any]:
    """The S per-seed slices of a stacked pytree."""
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(count)]


def fit_one(runner: Runner, theta: Any, key: jax.Array, data: Any, steps: int, *,
            segments: int = 1, on_segment: Optional[Callable[[int, Any], None]] = None,
            shared: Any = None) -> Any:
    """`fit` of a single run from `key` (split into its init and run keys) on `data` without a
    seed axis; `on_segment` and the result see its carry without one too."""
    data = jax.tree.map(lambda x: jnp.asarray(x)[None], data)
    callback = None
    if on_segment is not None:
        callback = lambda step, carry: on_segment(step, unstack(carry, 1)[0])
    carry = fit(runner, theta, jax.random.split(key)[None], data, steps, segments=segments,
                on_segment=callback, shared=shared)
    return unstack(carry, 1)[0]
