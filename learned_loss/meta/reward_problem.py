"""The inner problem of meta-training a learned reward: RL under r_theta, scored by the gold metric.

Setting. A reward model R is trained on preferences of the simulated labeler, which is noisy
(tau) and may favour length (lambda; `learned_loss.data.preference_pairs`). Optimising R hard
over-optimises it: the proxy rises while the gold score falls (Gao et al. 2023, "Scaling laws for
reward model overoptimization"), and with a length-biased labeler the completions grow. The
learned reward (`learned.reward`) sits on top of the frozen R:

    r_theta(x, y) = R(x, y) + k_theta(R(x, y) / 4, log(1 + |y|) / 4, [y ended with EOS]),

R's score at theta's initialisation (k's output layer is zero).

Inner run. From the SFT policy (the frozen reference too), `horizon` steps of on-policy RL
(`training.rl_step`: RLOO by default, leave-one-out baselines over K samples per prompt with a
sequence-level KL penalty, Ahmadian et al. 2024, "Back to basics: revisiting REINFORCE style
optimization for learning from human feedback in LLMs"; PPO and GRPO work the same way) whose
reward is r_theta: the score of `training.shaped_scores` with theta['learned_reward'] set. The H
steps are one jitted `lax.scan`; theta is an argument, so every candidate reuses the program.

Fitness. The final policy samples (temperature 1) completions of held-out prompts (a prompt
stream seeded apart from the training one); the task suite's gold scorers grade them on the host
(`rlhf_data.gold_scores`), and the meta-loss is minus the mean graded score. Sampling and gold
scoring are not differentiable, so theta is learned by full-horizon ES (`host_es`): no
truncation bias, every member scored after its whole run. A run whose parameters or metrics are
not finite has a NaN meta-loss (ES ranks it last).

Common random numbers: `meta_loss(theta, key, position)` trains on the prompts of stream
position `position` with the sampling key `key`, so the members of one outer step (antithetic
pairs included) see the same prompts and keys and differ only by theta.

Population: `run_population(thetas, key, position)` trains M members side by side, one
`jax.vmap` of the inner run over theta's leading axis (the start, the prompts and the key
shared), in programs of `members_per_program` members. On 2 CPU cores that trains no faster per
member than one run after another (measured: configs/meta_train_reward.py); it is for
accelerators, where M rollouts and updates at once fill the chip.

Shapes: H inner steps, B prompts per step, P padded prompt length.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learned_loss.core import train
from learned_loss.core import model as model_lib
from learned_loss.meta import base
from learned_loss.rlhf import training
from learned_loss.rlhf import data as rlhf_data

BATCH_KEYS = ("prompts", "prompt_lengths", "kl_coef")


class Outcome(NamedTuple):
    """One inner run and its evaluation."""

    loss: float  # -mean gold graded score (NaN for a diverged run)
    summary: dict  # means: gold_graded, gold_exact_match, proxy, length, finished, kl, and the
    # inner run's last-step rollout figures (train/...)
    params: Any  # the final policy's parameters


def inner_run(state: train.TrainState, batches: Mapping[str, jax.Array], frozen: Any, *,
              model: model_lib.Model, reference_model: model_lib.Model,
              reward_model_: model_lib.Model, optimizer: optax.GradientTransformation,
              settings: training.RLSettings):
    """H RL steps under `frozen` ({'reference', 'reward', 'learned_reward'}: the rl_step theta).

    batches: {'prompts': [H, B, P], 'prompt_lengths': [H, B], 'kl_coef': [H, B]}.
    Returns (state, metrics: each [H]).
    """

    def body(st, batch):
        st, metrics, _ = training.rl_step(st, batch, frozen, model=model,
                                      reference_model=reference_model,
                                      reward_model_=reward_model_, optimizer=optimizer,
                                      settings=settings)
        return st, metrics

    return jax.lax.scan(body, state, batches)


def population_run(thetas: Any, state: train.TrainState, batches: Mapping[str, jax.Array],
                   frozen: Any, **kwargs):
    """`inner_run` of every member of `thetas` (the learned reward's theta, each leaf [M, ...])
    from the same state, prompts and key. Returns (states, metrics), each leaf [M, ...]."""

    def one(theta):
        return inner_run(state, batches, dict(frozen, learned_reward=theta), **kwargs)

    return jax.vmap(one)(thetas)


def stream_batches(stream: rlhf_data.PromptStream, position: int,
                   horizon: int) -> dict[str, np.ndarray]:
    """The `horizon` batches of the stream from `position` (without moving `stream`), stacked:
    {'prompts': [H, B, P], 'prompt_lengths': [H, B], 'kl_coef': [H, B]}."""
    saved = stream.get_state()
    stream.set_state({"position": position, "kl_coef": saved["kl_coef"]})
    rows = [next(stream) for _ in range(horizon)]
    stream.set_state(saved)
    return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}


class RewardProblem:
    """Inner RL runs from one initial state under a candidate learned reward (module docstring).

    init_state: the SFT policy's TrainState (fresh optimizer state); each run replaces its rng.
    reference, reward: (model, params) of the frozen SFT policy and reward model.
    stream: the training prompts (its kl_coef is the fixed KL coefficient; no adaptive control
    inside a jitted run). evaluator: samples_of(model, params) -> per-sample arrays
    (`rlhf_pipeline.Evaluator`) on held-out prompts.
    """

    def __init__(self, *, model: model_lib.Model, optimizer: optax.GradientTransformation,
                 init_state: train.TrainState, reference, reward, settings: training.RLSettings,
                 stream: rlhf_data.PromptStream, horizon: int, evaluator):
        if horizon < 1:
            raise ValueError(f"the inner run needs horizon >= 1 steps, got {horizon}")
        if stream.kl_target > 0:
            raise ValueError("the inner RL runs use a fixed KL coefficient: set rl.kl_target=0")
        self.model = model
        self.init_state = init_state
        self.stream = stream
        self.horizon = horizon
        self.evaluator = evaluator
        self.frozen = {"reference": reference[1], "reward": reward[1]}
        kwargs = dict(model=model, reference_model=reference[0], reward_model_=reward[0],
                      optimizer=optimizer, settings=settings)
        self._run = jax.jit(functools.partial(inner_run, **kwargs))
        self._run_population = jax.jit(functools.partial(population_run, **kwargs))

    def _start(self, key: jax.Array, position: int):
        return (self.init_state._replace(rng=jax.random.key_data(key)),
                stream_batches(self.stream, position, self.horizon))

    def train(self, theta: Any, key: jax.Array, position: int) -> tuple[Any, dict]:
        """(params, metrics of the last step) of a run under theta (None: the raw reward-model
        score, the baseline) on the prompts from stream position `position`."""
        state, batches = self._start(key, position)
        frozen = dict(self.frozen)
        if theta is not None:
            frozen["learned_reward"] = _float32(theta)
        state, metrics = self._run(state, batches, frozen)
        return _finished(state.params, jax.device_get(metrics))

    def train_population(self, thetas: Any, key: jax.Array, position: int,
                         members_per_program: int = 0) -> list[tuple[Any, dict]]:
        """`train` of every member of `thetas` (leaves [M, ...]) on the same prompts and key, in
        vmapped programs of `members_per_program` members (0: all M in one)."""
        thetas = _float32(thetas)
        size = jax.tree.leaves(thetas)[0].shape[0]
        chunk = members_per_program or size
        state, batches = self._start(key, position)
        out = []
        for start in range(0, size, chunk):
            part = jax.tree.map(lambda x: x[start:start + chunk], thetas)
            states, metrics = self._run_population(part, state, batches, self.frozen)
            metrics = jax.device_get(metrics)
            for i in range(jax.tree.leaves(part)[0].shape[0]):
                out.append(_finished(jax.tree.map(lambda x: x[i], states.params),
                                     {k: v[i] for k, v in metrics.items()}))
        return out

    def evaluate(self, params: Any, evaluator=None) -> dict[str, float]:
        """Means of the policy's held-out samples (by `evaluator`, default the fitness one):
        gold graded and exact match, proxy (the reward model), length, finished, KL to the SFT
        policy."""
        per_sample = (evaluator or self.evaluator).samples_of(self.model, params)
        return {k: float(np.mean(v)) for k, v in per_sample.items()}

    def _outcome(self, params: Any, last: dict, evaluator=None) -> Outcome:
        summary = {f"train/{k}": v for k, v in last.items()}
        if params is None:
            return Outcome(float("nan"), dict(summary, diverged=1.0), None)
        summary.update(self.evaluate(params, evaluator), diverged=0.0)
        return Outcome(-summary["gold_graded"], summary, params)

    def run(self, theta: Any, key: jax.Array, position: int, evaluator=None) -> Outcome:
        """Train under theta, then score the final policy by the gold metric."""
        return self._outcome(*self.train(theta, key, position), evaluator)

    def run_population(self, thetas: Any, key: jax.Array, position: int,
                       members_per_program: int = 0, evaluator=None) -> list[Outcome]:
        """`run` of every member of `thetas` (leaves [M, ...]), trained side by side
        (`train_population`) and scored one after another on the same held-out prompts."""
        return [self._outcome(params, last, evaluator) for params, last in
                self.train_population(thetas, key, position, members_per_program)]

    def meta_loss(self, theta: Any, key: jax.Array, position: int) -> float:
        """-mean gold graded score of the policy trained under theta (NaN if it diverged)."""
        return self.run(theta, key, position).loss


def _float32(theta: Any) -> Any:
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), theta)


def _finished(params: Any, metrics: Mapping[str, np.ndarray]) -> tuple[Any, dict]:
    """(params, the last step's metrics) of a run whose metrics are [H] arrays; params None
    when they or those metrics are not finite (a diverged run)."""
    last = {k: float(v[-1]) for k, v in metrics.items()}
    finite = bool(base.all_finite(params)) and all(np.isfinite(list(last.values())))
    return (params if finite else None), last
