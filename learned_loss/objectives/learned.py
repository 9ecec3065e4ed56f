"""Learned objectives: a token loss, a preference loss and a reward network with parameters theta.

Each one is a small network whose parameters the outer loop (`learned_loss.meta`) learns. Each
has a documented initialisation at which it is exactly the hand-designed loss it generalises, so
meta-training warm-starts from MLE or DPO and a learned objective can only move away from them
when that helps the meta-objective.

Learned token loss (after ML3, Bechtle et al. 2021, "Meta learning via learned loss", and
Meta-Weight-Net, Shu et al. 2019): per target token t of example b, features x_{b,t} (all held
out of the gradient) go through an MLP g_theta to a weight

    w_{b,t} = 2 sigmoid(g_theta(x_{b,t}))  in (0, 2)       (non-negative by construction)
    loss = sum_{b,t} m_{b,t} w_{b,t} (-log p(y_{b,t})) / sum_{b,t} m_{b,t}

with m the target mask. The output layer of g starts at zero, so every w is 1 and the loss, its
value and its gradient, is exactly MLE's. Features (`TOKEN_FEATURES`), each scaled to O(1):
  log_prob      log p(y_t) / 5, clipped to [-4, 0]
  entropy       H(p(. | y_<t)) / log V, in [0, 1]
  max_log_prob  log max_v p(v) / 5, clipped to [-4, 0]
  position      the token's index within its answer / the answer's length, in [0, 1)
  ref_log_prob  log p_ref(y_t) / 5 under the frozen reference model, clipped to [-4, 0]
  length        log(1 + answer length) / 4
  answer_log_prob  the mean of log_prob over the example's answer tokens (the example-level
                signal a soft loss truncation needs; Kang and Hashimoto 2020)
`ref_log_prob` costs one more forward pass of the reference per step; it is only computed when
the objective's features include it. Beyond the defaults, two features read each training
row's own history in the run (`HISTORY_FEATURES`; after the area under the margin, Pleiss et al.
2020, "Identifying mislabeled data using the area under the margin ranking", and forgetting
events, Toneva et al. 2019): a corrupted answer is learned later than a clean one, so by the
time it is memorised its past still tells it apart:
  history_log_prob  the mean of the row's answer_log_prob over its earlier visits in this run
                    (its current answer_log_prob on its first visit)
  history_trend     answer_log_prob now minus history_log_prob (how much the row has moved)
They need batch['history_log_prob'] and batch['history_visits'] [B], which an in-memory inner
run keeps per training row (learned_loss/meta/lm_problem.py); the token loss then reports each
row's current answer_log_prob as metrics['row_answer_log_prob'] [B] to update them. One feature
reads the time (`SCHEDULE_FEATURES`), so that the loss can act differently early and late in a
run (memorisation of corrupted answers sets in late; Arpit et al. 2017):
  progress      min(step / run_steps, 1), with batch['step'] the optimizer steps taken and
                `run_steps` a setting of the loss (the fine-tuning run's length); 1 when the
                batch has no 'step' (evaluation)

Granularity. With granularity='token' (the default) every token has its own weight, as above.
With granularity='row' (one weight per example, as Meta-Weight-Net weighs examples) each row's
features are averaged over its answer tokens, standardised across the batch's rows (so that the
network reads where a row stands in its batch, at O(1) scale, however close the raw values are;
`progress` is passed as it is), and the row weights are normalised to a token-weighted mean of
1 over the batch:

    s_b = 2 sigmoid(g_theta(z_b)),   w_b = s_b sum_b n_b / sum_b n_b s_b,   n_b = sum_t m_{b,t}

so a constant scale, which Adam would undo, cannot be learned: only how rows are weighed against
each other. At the zero-output initialisation every w_b is 1 and the loss is MLE's.

Learned preference loss (after DiscoPOP, Lu et al. 2024, "Discovering preference optimization
algorithms with and for large language models"): with x = beta * delta (dpo.py's delta),

    f_theta(x) = -log sigmoid(x) + h_theta(x / 4),      loss = mean over pairs of f_theta(x)

h an MLP whose output layer starts at zero, so f is DPO's loss at initialisation.

Learned reward network (the reward the RL inner loop maximises): on top of a frozen reward
model's score s and the completion's length n and end flag e,

    r_theta = s + k_theta([s / 4, log(1 + n) / 4, e])

k an MLP whose output layer starts at zero, so r is the reward model's score at initialisation.
The outer loop (evolution strategies: sampling is not differentiable) moves theta so that a
policy trained on r_theta scores well under the gold metric.

Networks are plain dicts of arrays {'w0' [F, H], 'b0' [H], 'w1' [H], 'b1' []}: one tanh hidden
layer, small enough for evolution strategies, differentiable for truncated backprop.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from learned_loss.core import errors
from learned_loss.objectives import mle

TOKEN_FEATURES = ("log_prob", "entropy", "max_log_prob", "position", "ref_log_prob", "length",
                  "answer_log_prob")
HISTORY_FEATURES = ("history_log_prob", "history_trend")
SCHEDULE_FEATURES = ("progress",)
ALL_TOKEN_FEATURES = TOKEN_FEATURES + HISTORY_FEATURES + SCHEDULE_FEATURES  # default: TOKEN_FEATURES
GRANULARITIES = ("token", "row")
LOG_PROB_SCALE = 5.0
PREFERENCE_INPUT_SCALE = 4.0
REWARD_FEATURES = ("score", "length", "finished")
REWARD_ARTIFACT = "learned_reward"  # The artifact name of a meta-trained r_theta.

Params = Mapping[str, jax.Array]


# ---- the network ------------------------------------------------------------------------------


def init_mlp(key: jax.Array, num_features: int, hidden: int, input_scale: float = 1.0) -> dict:
    """A one-hidden-layer MLP whose output layer is zero (so its output is 0 everywhere).

    The first layer is LeCun-normal times `input_scale`; theta is float32 throughout.
    """
    if num_features < 1 or hidden < 1:
        raise ValueError(f"an MLP needs at least one feature and one hidden unit, got "
                         f"{num_features} features and {hidden} hidden")
    w0 = jax.random.normal(key, (num_features, hidden), jnp.float32)
    return {"w0": w0 * (input_scale / math.sqrt(num_features)),
            "b0": jnp.zeros((hidden,), jnp.float32),
            "w1": jnp.zeros((hidden,), jnp.float32),
            "b1": jnp.zeros((), jnp.float32)}


def mlp(theta: Params, x: jax.Array) -> jax.Array:
    """x: [..., F] -> [...]: w1 . tanh(x w0 + b0) + b1."""
    hidden = jnp.tanh(x @ theta["w0"] + theta["b0"])  # [..., H]
    return hidden @ theta["w1"] + theta["b1"]


def check_features(features: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    """`features` as a tuple; an unknown or repeated name is a ValueError naming the valid ones."""
    features = tuple(features)
    unknown = [f for f in features if f not in known]
    if unknown or len(set(features)) != len(features) or not features:
        raise ValueError(f"features must be distinct names among {known}, got {features}")
    return features


# ---- learned token loss -----------------------------------------------------------------------


def answer_positions(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """mask [B, T] -> (index of each target within its row's masked span [B, T], span length
    [B, 1]). Unmasked positions get index 0."""
    index = jnp.cumsum(mask, axis=1) - 1.0  # [B, T]
    return jnp.where(mask > 0, index, 0.0), mask.sum(axis=1, keepdims=True)


def token_features(logits: jax.Array, batch: Mapping[str, jax.Array],
                   features: Sequence[str], run_steps: int = 0) -> jax.Array:
    """The per-token features of the learned token loss, held out of the gradient.

    logits: [B, T, V]; batch: 'targets' [B, T], optional 'mask' [B, T], (when `features`
    holds 'ref_log_prob') 'ref_log_probs' [B, T] and (for 'progress') 'step' []; run_steps: the
    run length that 'progress' divides by. Returns [B, T, len(features)] float32.
    """
    logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, T, V]
    mask = mle.target_mask(batch)  # [B, T]
    target_lp = jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]

    index, length = answer_positions(mask)
    answer_lp = row_answer_log_prob(target_lp, mask)  # [B]
    columns = {}
    for name in features:
        if name == "log_prob":
            columns[name] = scaled_log_prob(target_lp)
        elif name == "entropy":
            entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)  # [B, T]
            columns[name] = entropy / math.log(logits.shape[-1])
        elif name == "max_log_prob":
            columns[name] = scaled_log_prob(log_probs.max(axis=-1))
        elif name == "position":
            columns[name] = index / jnp.maximum(length, 1.0)
        elif name == "ref_log_prob":
            if "ref_log_probs" not in batch:
                raise ValueError("the 'ref_log_prob' feature needs batch['ref_log_probs'] (the "
                                 "reference model's log-probabilities of the targets)")
            columns[name] = scaled_log_prob(jax.lax.stop_gradient(batch["ref_log_probs"]))
        elif name == "length":
            columns[name] = jnp.broadcast_to(jnp.log1p(length) / 4.0, mask.shape)
        elif name == "answer_log_prob":
            columns[name] = jnp.broadcast_to(answer_lp[:, None], mask.shape)
        elif name in HISTORY_FEATURES:
            history = history_log_prob(batch, answer_lp)  # [B]
            value = history if name == "history_log_prob" else answer_lp - history
            columns[name] = jnp.broadcast_to(value[:, None], mask.shape)
        elif name == "progress":
            columns[name] = jnp.broadcast_to(progress(batch, run_steps), mask.shape)
        else:
            raise errors.UserError(f"unknown token feature {name!r}; choose among "
                                   f"{ALL_TOKEN_FEATURES}")
    return jnp.stack([columns[name] for name in features], axis=-1)  # [B, T, F]


def scaled_log_prob(lp: jax.Array) -> jax.Array:
    """Log-probabilities as the features read them: lp / LOG_PROB_SCALE, clipped to [-4, 0]."""
    return jnp.clip(lp / LOG_PROB_SCALE, -4.0, 0.0)


def row_answer_log_prob(target_lp: jax.Array, mask: jax.Array) -> jax.Array:
    """target_lp, mask [B, T] -> [B]: the mean scaled log-probability of each row's answer
    tokens (the `answer_log_prob` feature)."""
    return (scaled_log_prob(target_lp) * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)


def history_log_prob(batch: Mapping[str, jax.Array], answer_lp: jax.Array) -> jax.Array:
    """[B]: each row's mean answer_log_prob over its earlier visits (batch['history_log_prob']
    where batch['history_visits'] > 0), else its current one (`answer_lp`)."""
    if "history_log_prob" not in batch or "history_visits" not in batch:
        raise errors.UserError("the history features need each row's past in the run "
                               "(batch['history_log_prob'], ['history_visits']), which only an "
                               "in-memory inner run keeps (learned_loss/meta/lm_problem.py); "
                               f"drop {HISTORY_FEATURES} from the features to train elsewhere")
    return jnp.where(batch["history_visits"] > 0, batch["history_log_prob"], answer_lp)


def reads_history(features: Sequence[str]) -> bool:
    return any(f in HISTORY_FEATURES for f in features)


def progress(batch: Mapping[str, jax.Array], run_steps: int) -> jax.Array:
    """[] min(batch['step'] / run_steps, 1): how far the run is; 1 without a 'step'."""
    if run_steps < 1:
        raise errors.UserError(f"the 'progress' feature needs the run's length: set the "
                               f"objective's run_steps to the fine-tuning steps (got "
                               f"{run_steps})")
    if "step" not in batch:
        return jnp.ones((), jnp.float32)
    return jnp.minimum(jnp.asarray(batch["step"], jnp.float32) / run_steps, 1.0)


def check_token_settings(features: Sequence[str], granularity: str, run_steps: int
                         ) -> tuple[str, ...]:
    """`features` as a tuple after checking the learned token loss's settings; a UserError
    names the wrong one and its valid values."""
    features = check_features(features, ALL_TOKEN_FEATURES)
    if granularity not in GRANULARITIES:
        raise errors.UserError(f"the learned token loss's granularity is {granularity!r}; "
                               f"choose one of {GRANULARITIES}")
    if isinstance(run_steps, bool) or not isinstance(run_steps, int) or run_steps < 0:
        raise errors.UserError(f"run_steps must be an int >= 0 (0: no 'progress' feature), "
                               f"got {run_steps!r}")
    if ("progress" in features) != (run_steps > 0):
        raise errors.UserError(f"run_steps ({run_steps}) is read only by the 'progress' "
                               f"feature: set it to the run's steps with 'progress' among the "
                               f"features, and to 0 without it (features {features})")
    return features


def init_token_loss(key: jax.Array, features: Sequence[str] = TOKEN_FEATURES,
                    hidden: int = 32) -> dict:
    """Theta of the learned token loss at its MLE initialisation (every weight 1)."""
    features = check_features(features, ALL_TOKEN_FEATURES)
    return init_mlp(key, len(features), hidden)


def standardise_rows(x: jax.Array, valid: jax.Array, keep: jax.Array) -> jax.Array:
    """x [B, F] -> each column's z-score over the rows where valid [B] is 1 (variance floored
    at 1e-6); columns where keep [F] is True are passed as they are."""
    count = jnp.maximum(valid.sum(), 1.0)
    mean = (x * valid[:, None]).sum(0) / count  # [F]
    var = (jnp.square(x - mean) * valid[:, None]).sum(0) / count  # [F]
    return jnp.where(keep, x, (x - mean) / jnp.sqrt(var + 1e-6))


def row_weights(theta: Params, x: jax.Array, mask: jax.Array, keep: jax.Array) -> jax.Array:
    """One weight per row (granularity 'row', module docstring): x [B, T, F] token features,
    mask [B, T], keep [F] (features not standardised) -> w [B], token-weighted mean 1."""
    n = mask.sum(1)  # [B] answer tokens
    valid = (n > 0).astype(jnp.float32)
    x_row = (x * mask[..., None]).sum(1) / jnp.maximum(n, 1.0)[:, None]  # [B, F]
    s = 2.0 * jax.nn.sigmoid(mlp(theta, standardise_rows(x_row, valid, keep)))  # [B]
    return s * jnp.maximum(n.sum(), 1.0) / jnp.maximum((s * n).sum(), 1e-6)


def token_weights(theta: Params, logits: jax.Array, batch: Mapping[str, jax.Array],
                  features: Sequence[str], granularity: str = "token",
                  run_steps: int = 0) -> jax.Array:
    """[B, T] weights: 2 sigmoid(g_theta(x)) in (0, 2) per token, or with granularity 'row'
    the row's weight on each of its tokens (`row_weights`); all 1 at the MLE initialisation."""
    x = token_features(logits, batch, features, run_steps)  # [B, T, F]
    if granularity == "token":
        return 2.0 * jax.nn.sigmoid(mlp(theta, x))
    keep = jnp.asarray([f in SCHEDULE_FEATURES for f in features])  # [F]
    w = row_weights(theta, x, mle.target_mask(batch), keep)  # [B]
    return jnp.broadcast_to(w[:, None], batch["targets"].shape)


def token_loss(theta: Params, logits: jax.Array, batch: Mapping[str, jax.Array], *,
               features: Sequence[str] = TOKEN_FEATURES, granularity: str = "token",
               run_steps: int = 0):
    """The learned token loss (module docstring); theta from `init_token_loss` or meta-training.

    logits: [B, T, V]; batch: 'targets' [B, T], optional 'mask' [B, T], 'ref_log_probs' [B, T],
    'step' [] (see `token_features`). Returns (loss [], metrics {loss, nll, accuracy, tokens,
    mean_weight, weight_std}, and `weighted_nll`'s diagnosis metrics).
    """
    weights = token_weights(theta, logits, batch, features, granularity, run_steps)
    value, metrics = weighted_nll(weights, logits, batch)
    if reads_history(features):  # Each row's answer_log_prob now, to update its history.
        target_lp = mle.token_log_likelihood(jax.lax.stop_gradient(logits), batch["targets"])
        metrics["row_answer_log_prob"] = row_answer_log_prob(target_lp, mle.target_mask(batch))
    return value, metrics


def weighted_nll(weights: jax.Array, logits: jax.Array, batch: Mapping[str, jax.Array]):
    """sum m w (-log p(y)) / sum m for weights [B, T] that are functions of stop-gradient
    features (so the gradient is the weighted cross-entropy's). Returns (loss [], metrics) like
    `token_loss`. A diagnosis batch that marks its corrupted rows (batch['corrupted'] [B]) also
    gets the mean weight of their answer tokens and of the other rows' ('weight_noisy',
    'weight_clean'; nan where a kind has no token)."""
    mask = mle.target_mask(batch)  # [B, T]
    tokens = jnp.maximum(mask.sum(), 1.0)
    nll = -mle.token_log_likelihood(logits, batch["targets"])  # [B, T]
    total = (weights * nll * mask).sum() / tokens
    correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
    mean_weight = (weights * mask).sum() / tokens
    weight_var = (jnp.square(weights - mean_weight) * mask).sum() / tokens
    metrics = {"loss": total, "nll": (nll * mask).sum() / tokens,
               "accuracy": (correct * mask).sum() / tokens, "tokens": mask.sum(),
               "mean_weight": mean_weight, "weight_std": jnp.sqrt(weight_var)}
    if "corrupted" in batch:
        noisy = mask * jnp.asarray(batch["corrupted"], jnp.float32)[:, None]  # [B, T]
        for key, m in (("weight_noisy", noisy), ("weight_clean", mask - noisy)):
            metrics[key] = (weights * m).sum() / m.sum()
    return total, metrics


# ---- closed forms of the learned token loss ----------------------------------------------------

# Logistic-linear weights w = 2 sigmoid(bias + coef . x) over a few features: the symbolic
# candidates fitted to a meta-trained network (learned_loss/meta/interpret.py). `bias` alone is a
# constant weight; a negative coefficient on answer_log_prob is a soft loss truncation.
CLOSED_FORMS = {
    "constant": (),
    "token": ("log_prob",),
    "answer": ("answer_log_prob",),
    "token_answer": ("log_prob", "answer_log_prob"),
    "token_answer_position": ("log_prob", "answer_log_prob", "position"),
}


def closed_form_weights(theta: Params, x: jax.Array) -> jax.Array:
    """w = 2 sigmoid(theta['bias'] + x . theta['coef']); x: [..., K] -> [...]."""
    return 2.0 * jax.nn.sigmoid(theta["bias"] + x @ theta["coef"])


def closed_form_loss(theta: Params, logits: jax.Array, batch: Mapping[str, jax.Array], *,
                     form: str):
    """The token loss with closed-form weights (`CLOSED_FORMS[form]`). Returns like
    `token_loss`."""
    if form not in CLOSED_FORMS:
        raise errors.UserError(f"unknown closed form {form!r}; choose among {sorted(CLOSED_FORMS)}")
    features = CLOSED_FORMS[form]
    if features:
        x = token_features(logits, batch, features)  # [B, T, K]
    else:
        x = jnp.zeros(batch["targets"].shape + (0,), jnp.float32)
    return weighted_nll(closed_form_weights(theta, x), logits, batch)


# ---- learned preference loss ------------------------------------------------------------------


def init_preference_loss(key: jax.Array, hidden: int = 16) -> dict:
    """Theta of the learned preference loss at its DPO initialisation (h = 0)."""
    return init_mlp(key, 1, hidden, input_scale=2.0)


def preference_curve(theta: Params, x: jax.Array) -> jax.Array:
    """f_theta(x) = -log sigmoid(x) + h_theta(x / 4), elementwise on x = beta * delta; a theta
    without the network's arrays is a closed form (`closed_form_preference_curve`)."""
    if "w0" not in theta:
        return closed_form_preference_curve(theta, x)
    h = mlp(theta, (x / PREFERENCE_INPUT_SCALE)[..., None])
    return -jax.nn.log_sigmoid(x) + h


# Closed forms of the learned preference loss: restrictions of one family (the candidates fitted
# to a meta-trained curve by learned_loss/meta/interpret.py), with z = a x + b,
#
#   f(x) = (1 - m(x)) (-log sigmoid(z)) + m(x) exp(-z) + c x + q x^2 + d,
#   m(x) = w sigmoid(x / t),  t = exp(log_t).
#
# Each form frees the parameters it names; the others stay at PREFERENCE_FORM_INIT, where f is
# DPO's loss. 'dpo_linear' holds conservative DPO (c = eps: -log sigmoid(x) + eps x is cDPO's
# label smoothing, Mitchell 2023) and robust DPO (c = -eps / (1 - 2 eps), Chowdhury et al.
# 2024); 'dpo_quadratic' adds IPO's square; 'log_ratio_modulated' is DiscoPOP's discovered loss
# (Lu et al. 2024: a sigmoid gate of the margin mixes the logistic and the exponential loss).
PREFERENCE_FORMS = {
    "dpo_affine": ("a", "b", "d"),
    "dpo_linear": ("a", "b", "c", "d"),
    "dpo_quadratic": ("a", "b", "q", "d"),
    "log_ratio_modulated": ("a", "b", "w", "log_t", "d"),
}
PREFERENCE_FORM_INIT = {"a": 1.0, "b": 0.0, "c": 0.0, "q": 0.0, "d": 0.0, "w": 0.0, "log_t": 0.0}


def closed_form_preference_curve(theta: Params, x: jax.Array) -> jax.Array:
    """The closed form above, elementwise on x; theta holds every PREFERENCE_FORM_INIT key."""
    missing = sorted(set(PREFERENCE_FORM_INIT) - set(theta))
    if missing:
        raise ValueError(f"a closed-form preference loss needs the parameters "
                         f"{sorted(PREFERENCE_FORM_INIT)}; missing {missing}")
    z = theta["a"] * x + theta["b"]
    log_gate = jax.nn.log_sigmoid(x * jnp.exp(-theta["log_t"]))
    # m exp(-z) as w exp(log sigmoid(x / t) - z), capped so that a steep fit stays finite.
    exponential = theta["w"] * jnp.exp(jnp.minimum(log_gate - z, 30.0))
    logistic = (1.0 - theta["w"] * jnp.exp(log_gate)) * -jax.nn.log_sigmoid(z)
    return logistic + exponential + theta["c"] * x + theta["q"] * jnp.square(x) + theta["d"]


def preference_loss(theta: Params, policy_chosen_logps: jax.Array,
                    policy_rejected_logps: jax.Array, ref_chosen_logps: jax.Array,
                    ref_rejected_logps: jax.Array, beta: float = 0.1):
    """Mean over the B pairs of f_theta(beta * delta); every log-prob array is [B].

    Returns (loss [], metrics {loss, reward_margin, accuracy}) like `dpo.loss`.
    """
    delta = ((policy_chosen_logps - ref_chosen_logps)
             - (policy_rejected_logps - ref_rejected_logps))  # [B]
    total = jnp.mean(preference_curve(theta, beta * delta))
    margin = beta * jax.lax.stop_gradient(delta)  # [B]
    return total, {"loss": total, "reward_margin": margin.mean(),
                   "accuracy": (margin > 0).astype(jnp.float32).mean()}


# ---- learned reward ---------------------------------------------------------------------------


def init_reward(key: jax.Array, hidden: int = 16) -> dict:
    """Theta of the learned reward at its initialisation (the reward model's score)."""
    return init_mlp(key, len(REWARD_FEATURES), hidden)


def damping_reward(factor: float, hidden: int = 1, slope: float = 0.01) -> dict:
    """Theta of the hand-set damping reward r = (1 - factor) score: RL on the reward model's
    score scaled down, so that the KL penalty holds the policy nearer the SFT policy.

    Its first hidden unit reads the score in tanh's linear range, k = w1 tanh(slope s / 4) with
    w1 = -4 factor / slope, which is -factor s to a relative (slope s / 4)^2 / 3 (1e-5 at
    |s| = 2); the other units are off.
    """
    if hidden < 1:
        raise ValueError(f"the damping reward needs at least one hidden unit, got {hidden}")
    w0 = jnp.zeros((len(REWARD_FEATURES), hidden), jnp.float32).at[0, 0].set(slope)
    w1 = jnp.zeros((hidden,), jnp.float32).at[0].set(-4.0 * factor / slope)
    return {"w0": w0, "b0": jnp.zeros((hidden,), jnp.float32), "w1": w1,
            "b1": jnp.zeros((), jnp.float32)}


def reward(theta: Params, score: jax.Array, length: jax.Array, finished: jax.Array) -> jax.Array:
    """r_theta [N] from the frozen reward model's score [N], the completion length [N] (tokens)
    and whether it ended with EOS [N]."""
    x = jnp.stack([score / 4.0, jnp.log1p(length.astype(jnp.float32)) / 4.0,
                   finished.astype(jnp.float32)], axis=-1)  # [N, 3]
    return score + mlp(theta, x)


def check_reward_theta(theta: Mapping[str, object]) -> dict:
    """theta of the learned reward as float32 arrays, after checking its keys and shapes
    ({'w0' [3, H], 'b0' [H], 'w1' [H], 'b1' []}); a ValueError names what is wrong."""
    expected = {"w0", "b0", "w1", "b1"}
    if set(theta) != expected:
        raise ValueError(f"a learned reward's theta has the arrays {sorted(expected)}, got "
                         f"{sorted(theta)}")
    out = {k: jnp.asarray(v, jnp.float32) for k, v in theta.items()}
    hidden = out["b0"].shape[0] if out["b0"].ndim == 1 else -1
    shapes = {"w0": (len(REWARD_FEATURES), hidden), "b0": (hidden,), "w1": (hidden,), "b1": ()}
    wrong = {k: out[k].shape for k in shapes if out[k].shape != shapes[k]}
    if hidden < 1 or wrong:
        raise ValueError(f"a learned reward's theta has shapes w0 [3, H], b0 [H], w1 [H], b1 []; "
                         f"got {({k: v.shape for k, v in out.items()})}")
    return out
