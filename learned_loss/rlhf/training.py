"""The RLHF baselines as training steps: reward model, DPO, and on-policy PPO / RLOO / GRPO.

The losses themselves live in `learned_loss.objectives` (pure functions on arrays); this module
wires them to the model:

  reward_loss_fn   Bradley-Terry on the scalar head read at each completion's EOS.
  dpo_loss_fn      DPO / IPO / a learned preference loss on summed (IPO: averaged) completion
                   log-probabilities against a frozen reference passed as theta.
  rl_step          one on-policy iteration: sample K completions per prompt, score them with the
                   reward model (or the learned reward r_theta on top of it, `shaped_scores`),
                   compute advantages (PPO: per-token KL penalty + GAE + whitening;
                   RLOO: leave-one-out; GRPO: group-normalised), then `epochs` passes over
                   `minibatches` minibatches of clipped-surrogate updates. One jitted program.
  sample_and_score the policy's samples with their proxy score, KL to the reference and length.

Shapes: B batch (pairs, or prompts), K samples per prompt, R = B K rollout rows, W = seq_len + 1,
P padded prompt length, C max new tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from learned_loss.core import errors, train
from learned_loss.core import model as model_lib
from learned_loss.objectives import dpo, grpo, kl, learned, masked, ppo, reward_model, rloo
from learned_loss.rlhf import rollout as rollout_lib

ALGORITHMS = ("ppo", "rloo", "grpo")


# ---- reward model and DPO -------------------------------------------------------------------


def _answer_mask(prompt_length, length, width):
    """[B, W - 1] float: 1 on targets that are completion tokens (and the EOS)."""
    t = jnp.arange(width - 1)[None, :]
    return ((t >= prompt_length[:, None] - 1) & (t < length[:, None] - 1)).astype(jnp.float32)


def reward_loss_fn(model: model_lib.Model, *, center_coef: float = 0.0) -> train.LossFn:
    """Bradley-Terry loss of a scalar-head model on a batch of pairs (theta unused).

    batch: {'chosen', 'rejected': [B, W], 'chosen_length', 'rejected_length': [B]}, and
    optionally 'gold_order' [B] (+1 / -1 / 0), which adds the metric `gold_accuracy`: how often
    the reward model orders a pair as the gold scores do, among pairs they order.
    The same model and settings give the same function (`train.program`), so that the steps
    jitted from it compile once.
    """
    return train.program(("reward_loss", model, center_coef),
                         lambda: _reward_loss_fn(model, center_coef=center_coef))


def _reward_loss_fn(model: model_lib.Model, *, center_coef: float) -> train.LossFn:

    def loss_fn(params, batch, theta):
        del theta
        tokens = jnp.concatenate([batch["chosen"], batch["rejected"]], axis=0)  # [2B, W]
        ends = jnp.concatenate([batch["chosen_length"], batch["rejected_length"]]) - 1  # [2B]
        scalar = model.apply(params, tokens).scalar  # [2B, W]
        rewards = reward_model.values_at(scalar, ends)  # [2B]
        half = batch["chosen"].shape[0]
        loss, metrics = reward_model.bradley_terry_loss(rewards[:half], rewards[half:],
                                                        center_coef=center_coef)
        if "gold_order" in batch:  # Agreement with the noiseless order, where there is one.
            order = batch["gold_order"]
            agree = jnp.sign(rewards[:half] - rewards[half:]) == order
            ordered = jnp.abs(order)
            metrics["gold_accuracy"] = (agree * ordered).sum() / jnp.maximum(ordered.sum(), 1.0)
        return loss, metrics

    return loss_fn


def completion_log_prob(model: model_lib.Model, params: Any, tokens, prompt_length, length, *,
                        average: bool = False) -> jax.Array:
    """[B]: sum (or mean) over the completion and its EOS of log p(token | prefix).

    tokens: [B, W] laid out as `rlhf_data.encode_completion`; prompt_length, length: [B]."""
    logits = model.apply(params, tokens[:, :-1]).logits  # [B, W - 1, V]
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_p, tokens[:, 1:, None], axis=-1)[..., 0]  # [B, W - 1]
    mask = _answer_mask(prompt_length, length, tokens.shape[1])
    total = (picked * mask).sum(axis=1)
    return total / jnp.maximum(mask.sum(axis=1), 1.0) if average else total


def dpo_loss_fn(model: model_lib.Model, *, beta: float = dpo.BETA, loss_type: str = "sigmoid",
                label_smoothing: float = 0.0,
                preference_theta: Mapping[str, Any] | None = None) -> train.LossFn:
    """DPO (or IPO, or a learned preference loss) of the policy against the reference
    parameters passed as theta.

    IPO compares per-token average log-probabilities, as trl does; DPO compares sums.
    loss_type="learned": `learned.preference_loss(preference_theta, ...)` on sums, the mean of
    f(beta * delta) with f the learned curve (DiscoPOP-style, Lu et al. 2024; exactly DPO at
    `learned.init_preference_loss`). preference_theta (a dict of arrays) is closed over and not
    trained; the metrics are DPO's (its loss as `dpo_loss`) with `loss` the learned one.
    The same model, settings and preference_theta values give the same function
    (`train.program`, keyed by the values), so that the steps jitted from it compile once.
    """
    key = ("dpo_loss", model, beta, loss_type, label_smoothing,
           _values_key(preference_theta))
    return train.program(key, lambda: _dpo_loss_fn(
        model, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
        preference_theta=preference_theta))


def _values_key(tree: Any) -> Any:
    """A hashable key of a pytree of host arrays by their values (None for None)."""
    if tree is None:
        return None
    leaves, treedef = jax.tree.flatten(tree)
    arrays = jax.device_get([jnp.asarray(x) for x in leaves])
    return treedef, tuple((a.dtype.str, a.shape, a.tobytes()) for a in arrays)


def _dpo_loss_fn(model: model_lib.Model, *, beta: float, loss_type: str,
                 label_smoothing: float,
                 preference_theta: Mapping[str, Any] | None) -> train.LossFn:
    if loss_type == "learned":
        if preference_theta is None:
            raise ValueError("loss_type='learned' needs preference_theta (the learned preference "
                             "loss's parameters)")
        if label_smoothing:
            raise ValueError(f"label_smoothing={label_smoothing} is conservative DPO's; the "
                             f"learned preference loss takes none")
        preference_theta = {k: jnp.asarray(v, jnp.float32) for k, v in preference_theta.items()}
    average = loss_type == "ipo"

    def loss_fn(params, batch, theta):
        def log_probs(p, side):
            return completion_log_prob(model, p, batch[side], batch["prompt_length"],
                                       batch[f"{side}_length"], average=average)

        reference = jax.lax.stop_gradient(theta)
        logps = (log_probs(params, "chosen"), log_probs(params, "rejected"),
                 log_probs(reference, "chosen"), log_probs(reference, "rejected"))  # 4 x [B]
        if loss_type != "learned":
            return dpo.loss(*logps, beta=beta, loss_type=loss_type,
                            label_smoothing=label_smoothing)
        _, metrics = dpo.loss(*logps, beta=beta)
        total, _ = learned.preference_loss(preference_theta, *logps, beta=beta)
        return total, dict(metrics, loss=total, dpo_loss=metrics["loss"])

    return loss_fn


# ---- on-policy RL ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RLSettings:
    """Static settings of an RL step (trl's defaults where it has them)."""

    algorithm: str = "ppo"  # One of ALGORITHMS.
    samples_per_prompt: int = 4  # K: RLOO and GRPO need >= 2.
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    epochs: int = 4  # Passes over each rollout batch (trl num_ppo_epochs).
    minibatches: int = 1  # Per pass (trl num_mini_batches).
    missing_eos_penalty: float = 1.0  # Subtracted from the score of a completion without EOS.
    clip_range: float = ppo.CLIP_RANGE
    clip_range_value: float = ppo.CLIP_RANGE_VALUE
    vf_coef: float = ppo.VF_COEF
    gamma: float = ppo.GAMMA
    lam: float = ppo.LAM
    whiten_advantages: bool = True  # PPO.
    grpo_beta: float = 0.04  # GRPO's k3 KL coefficient (0: no reference term).

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise errors.UserError(f"unknown RL algorithm {self.algorithm!r}; choose one of "
                                   f"{ALGORITHMS}")
        if self.algorithm in ("rloo", "grpo") and self.samples_per_prompt < 2:
            raise ValueError(f"{self.algorithm} compares samples of one prompt: "
                             f"samples_per_prompt must be >= 2, got {self.samples_per_prompt}")
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError("epochs and minibatches must be >= 1")


def _advantages(s: RLSettings, scores, old_logp, old_values, ref_logp, mask, kl_coef):
    """(advantages: [R, C] for PPO, [R] otherwise; PPO returns [R, C] or None)."""
    k = s.samples_per_prompt
    if s.algorithm == "ppo":
        rewards, _ = ppo.kl_penalized_rewards(scores, old_logp, ref_logp, mask, kl_coef)
        advantages, returns = ppo.gae(rewards, old_values, mask, gamma=s.gamma, lam=s.lam)
        if s.whiten_advantages:
            advantages = masked.masked_whiten(advantages, mask) * mask
        return advantages, returns
    if s.algorithm == "rloo":
        rewards = rloo.sequence_rewards(scores, old_logp, ref_logp, mask, kl_coef)  # [R]
        return rloo.leave_one_out_advantages(rewards.reshape(-1, k)).reshape(-1), None
    return grpo.group_advantages(scores.reshape(-1, k)).reshape(-1), None


def _minibatch_loss(params, data, *, model, s: RLSettings):
    """The algorithm's loss on one minibatch of experience (a dict of [M, ...] arrays)."""
    ro = data["rollout"]
    logp, values = rollout_lib.policy_outputs(model, params, ro)
    if s.algorithm == "ppo":
        return ppo.ppo_loss(logp, data["old_logp"], data["advantages"], values,
                            data["old_values"], data["returns"], ro.mask,
                            clip_range=s.clip_range, clip_range_value=s.clip_range_value,
                            vf_coef=s.vf_coef)
    if s.algorithm == "rloo":
        seq = (logp * ro.mask).sum(axis=1)
        old = (data["old_logp"] * ro.mask).sum(axis=1)
        return rloo.policy_loss(seq, old, data["advantages"], clip_range=s.clip_range)
    return grpo.loss(logp, data["old_logp"], data["ref_logp"], data["advantages"], ro.mask,
                     beta=s.grpo_beta, clip_eps=s.clip_range)


def shaped_scores(theta: Mapping[str, Any], proxy: jax.Array, rollout: rollout_lib.Rollout,
                  missing_eos_penalty: float) -> tuple[jax.Array, jax.Array]:
    """(reward [R] before the missing-EOS penalty, score [R] after it) of rollouts whose reward
    model scored `proxy` [R].

    The reward is the reward model's score, or, when theta holds 'learned_reward', the learned
    reward r_theta(score, length, finished) of `learned.reward` (length: completion tokens
    before the EOS, as the 'length' metric counts them), which equals the score at
    `learned.init_reward`. The missing-EOS penalty (trl's) applies to either.
    """
    reward = proxy
    if "learned_reward" in theta:
        length = rollout.lengths - rollout.finished.astype(jnp.int32)  # [R]
        reward = learned.reward(theta["learned_reward"], proxy, length, rollout.finished)
    return reward, ppo.apply_missing_eos_penalty(reward, rollout.finished, missing_eos_penalty)


def rl_step(state: train.TrainState, batch: Mapping[str, jax.Array], theta: Mapping[str, Any],
            *, model: model_lib.Model, reference_model: model_lib.Model,
            reward_model_: model_lib.Model, optimizer: optax.GradientTransformation,
            settings: RLSettings):
    """One on-policy iteration. Returns (state, metrics, (completions [R, C], finished [R])).

    batch: {'prompts': [B, P], 'prompt_lengths': [B], 'kl_coef': [B], ...};
    theta: {'reference': reference params, 'reward': reward-model params} (frozen), and
    optionally 'learned_reward': the learned reward's theta (`shaped_scores`; then the metrics
    also hold 'learned_reward', the mean r_theta).
    """
    s = settings
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 0x5EED)
    sample_key, shuffle_key = jax.random.split(key)
    prompts, lengths = rollout_lib.repeat_prompts(batch["prompts"], batch["prompt_lengths"],
                                                  s.samples_per_prompt)
    ro = rollout_lib.sample(model, state.params, prompts, lengths, sample_key,
                            max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                            top_k=s.top_k)
    old_logp, old_values = rollout_lib.policy_outputs(model, state.params, ro)
    ref_logp = rollout_lib.log_probs(
        reference_model.apply(theta["reference"], ro.sequences).logits, ro)
    proxy = rollout_lib.score(reward_model_, theta["reward"], ro)  # [R]
    reward, scores = shaped_scores(theta, proxy, ro, s.missing_eos_penalty)  # [R] each
    kl_coef = batch["kl_coef"][0]
    advantages, returns = _advantages(s, scores, old_logp, old_values, ref_logp, ro.mask,
                                      kl_coef)
    experience = {"rollout": ro, "old_logp": old_logp, "ref_logp": ref_logp,
                  "advantages": advantages}
    if s.algorithm == "ppo":
        experience.update(old_values=old_values, returns=returns)
    experience = jax.lax.stop_gradient(experience)

    rows = prompts.shape[0]
    if rows % s.minibatches:
        raise ValueError(f"{rows} rollout rows do not split into {s.minibatches} minibatches")
    size = rows // s.minibatches
    order = jnp.stack([jax.random.permutation(jax.random.fold_in(shuffle_key, e), rows)
                       for e in range(s.epochs)])  # [E, R]
    order = order.reshape(s.epochs * s.minibatches, size)  # [E M, R / M]
    loss_fn = jax.value_and_grad(
        lambda p, d: _minibatch_loss(p, d, model=model, s=s), has_aux=True)

    def update(st, index):
        data = jax.tree.map(lambda x: jnp.take(x, index, axis=0), experience)
        (_, metrics), grads = loss_fn(st.params, data)
        st, norms = train.apply_gradients(st, grads, optimizer)
        return st, dict(metrics, **norms)

    state, update_metrics = jax.lax.scan(update, state, order)
    sequence_kl = (kl.k1(old_logp, ref_logp) * ro.mask).sum(axis=1)  # [R]
    metrics = {k: jnp.mean(v) for k, v in update_metrics.items()}
    metrics.update({
        "proxy_reward": proxy.mean(),
        "score": scores.mean(),
        "kl": sequence_kl.mean(),
        "kl_coef": kl_coef,
        "length": (ro.lengths - ro.finished.astype(jnp.int32)).mean(),
        "finished": ro.finished.astype(jnp.float32).mean(),
        "advantage_std": jnp.std(advantages),
    })
    if "learned_reward" in theta:
        metrics["learned_reward"] = reward.mean()
    return state, metrics, (ro.completions, ro.finished)


def sample_and_score(model: model_lib.Model, params: Any, reference_model: model_lib.Model,
                     reference_params: Any, reward_model_: model_lib.Model, reward_params: Any,
                     prompts: jax.Array, prompt_lengths: jax.Array, rng: jax.Array, *,
                     max_new_tokens: int, temperature: float = 1.0) -> dict[str, jax.Array]:
    """Per row: the policy's sample (completions [B, C]), its proxy score [B], sequence KL to
    the reference (k1, [B]), length before EOS [B] and whether it ended [B]."""
    ro = rollout_lib.sample(model, params, prompts, prompt_lengths, rng,
                            max_new_tokens=max_new_tokens, temperature=temperature)
    logp, _ = rollout_lib.policy_outputs(model, params, ro)
    ref_logp = rollout_lib.log_probs(reference_model.apply(reference_params,
                                                           ro.sequences).logits, ro)
    return {
        "completions": ro.completions,
        "proxy": rollout_lib.score(reward_model_, reward_params, ro),
        "kl": (kl.k1(logp, ref_logp) * ro.mask).sum(axis=1),
        "length": ro.lengths - ro.finished.astype(jnp.int32),
        "finished": ro.finished,
    }
