"""The inner problem of meta-training a preference loss: DPO-style training on noisy labels.

Setting. A policy pi starts at the SFT policy pi_ref (also the frozen reference) and trains on
pairs (x, y_w, y_l) labelled by the simulated labeler of `learned_loss.data.preference_pairs`,
which prefers a to b with probability sigmoid((g(a) - g(b) + lambda (|a| - |b|) / L) / tau): a
noisy (tau) and length-biased (lambda) view of the gold graded score g. With the implicit reward
margin (Rafailov et al. 2023, "Direct preference optimization: your language model is secretly
a reward model")

    delta = (log pi(y_w | x) - log pi_ref(y_w | x)) - (log pi(y_l | x) - log pi_ref(y_l | x))

(sums over each completion and its EOS, `training.completion_log_prob`), an inner step is one step
of a differentiable adam (`train.constant_adam`) on the learned preference loss

    L_theta(pi) = mean over a batch of f_theta(beta delta),
    f_theta(x) = -log sigmoid(x) + h_theta(x / 4)                  (`learned.preference_loss`)

(after DiscoPOP, Lu et al. 2024, "Discovering preference optimization algorithms with and for
large language models"). At theta's initialisation h = 0 and the step is exactly a DPO step.

Meta-loss. On validation pairs put in the gold order (y+ the completion with the higher gold
score as chosen, y- the other; ties dropped), DPO's loss of the current policy (`dpo.loss`):

    M(pi) = mean over a batch of -log sigmoid(beta delta(y+, y-)),

the Bradley-Terry negative log-likelihood of the gold order under the policy's implicit reward
beta log(pi / pi_ref): differentiable, and low when the policy orders pairs as the gold scorer
does rather than as the noisy labeler did. Meta-training thus looks for an f robust to the
labeler's noise and length bias. The hand-designed answers to label noise are curves of this
family: conservative DPO (cDPO, Mitchell 2023, "A note on DPO with noisy preferences &
relationship to IPO"; label smoothing eps) is f(x) = -log sigmoid(x) + eps x, and robust DPO
(Chowdhury et al. 2024, "Provably robust DPO: aligning language models with noisy feedback"),
unbiased for a flip rate eps, is f(x) = -log sigmoid(x) - eps x / (1 - 2 eps). Adam makes the
inner step nearly invariant to a rescaling of f, so theta cannot win by merely raising the step
size.

Pairs live on device as stacked arrays (`PairRows`, rows [N, W]); each inner step and each
meta-loss draws a batch of rows uniformly with replacement from its key (as `training_rows.draw`),
split over the mesh's `data` axis when a mesh is given. Label noise beyond the labeler's own:
`flip_labels` swaps a seeded fraction of the pairs (symmetric flips, the noise model of cDPO and
robust DPO).

Inner state: {'params' (the policy), 'opt_state', 'step' [] int32}; every run starts at the
reference parameters, which the problem closes over.

Shapes: N rows, B batch, W = seq_len + 1 tokens of one scored sequence (the
`rlhf_data.encode_completion` layout).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learned_loss.core import model as model_lib
from learned_loss.data import preference_pairs
from learned_loss.meta import base
from learned_loss.objectives import dpo, learned
from learned_loss.rlhf import training
from learned_loss.rlhf import data as rlhf_data

KEYS = ("chosen", "rejected", "chosen_length", "rejected_length", "prompt_length")


class PairRows(NamedTuple):
    """Encoded preference pairs (`rlhf_data.encode_pair`) stacked on a leading axis, as
    labelled."""

    chosen: np.ndarray  # [N, W] int32
    rejected: np.ndarray  # [N, W] int32
    chosen_length: np.ndarray  # [N] int32
    rejected_length: np.ndarray  # [N] int32
    prompt_length: np.ndarray  # [N] int32
    gold_order: np.ndarray  # [N] float32: sign(g_chosen - g_rejected), 0 on a gold tie

    def __len__(self) -> int:
        return self.chosen.shape[0]

    @property
    def flipped(self) -> np.ndarray:
        """[N] bool: the label disagrees with the gold order (the labeler chose the worse)."""
        return self.gold_order < 0

    def batch(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in KEYS}


def pair_rows(encoded: Sequence[Mapping[str, np.ndarray]]) -> PairRows:
    """Rows of `rlhf_data.encode_pair` (e.g. an `rlhf_data.encoded_pairs` source), stacked."""
    rows = [encoded[i] for i in range(len(encoded))]
    if not rows:
        raise ValueError("no preference pairs to stack")
    stacked = {f: np.stack([r[f] for r in rows]) for f in PairRows._fields}
    return PairRows(**{f: v.astype(np.float32 if f == "gold_order" else np.int32)
                       for f, v in stacked.items()})


def encode_records(records: Sequence[Mapping[str, Any]], seq_len: int) -> PairRows:
    """Preference-pair records (`preference_pairs.load_split` rows) as stacked arrays, in the
    order (family, index) so that the result does not depend on TFDS's write order."""
    decoded = sorted((preference_pairs.decode_record(r) for r in records),
                     key=lambda r: (r["family"], r["index"]))
    return pair_rows([rlhf_data.encode_pair(r, seq_len) for r in decoded])


def gold_ordered(rows: PairRows) -> PairRows:
    """The pairs with the gold-better completion as chosen (flipped labels swapped back) and
    gold ties dropped; every gold_order of the result is +1."""
    keep = rows.gold_order != 0  # [N]
    if not keep.any():
        raise ValueError(f"all {len(rows)} pairs are gold ties: none orders the completions")
    swap = rows.flipped[keep]  # [M]

    def pick(a, b):  # [M, ...]: a where the order stands, b where it is swapped.
        a, b = a[keep], b[keep]
        return np.where(swap.reshape(swap.shape + (1,) * (a.ndim - 1)), b, a)

    return PairRows(chosen=pick(rows.chosen, rows.rejected),
                    rejected=pick(rows.rejected, rows.chosen),
                    chosen_length=pick(rows.chosen_length, rows.rejected_length),
                    rejected_length=pick(rows.rejected_length, rows.chosen_length),
                    prompt_length=rows.prompt_length[keep],
                    gold_order=np.abs(rows.gold_order[keep]))


def flip_labels(rows: PairRows, rate: float, seed: int) -> PairRows:
    """`rows` with each label swapped (chosen <-> rejected, gold_order negated) independently with
    probability `rate`, drawn from `seed` (the same rows, rate and seed give the same flips)."""
    if not 0.0 <= rate < 0.5:
        raise ValueError(f"a flip rate must lie in [0, 0.5) (at 0.5 labels carry no signal), "
                         f"got {rate}")
    flip = np.random.default_rng([seed, len(rows)]).random(len(rows)) < rate  # [N]

    def pick(a, b):  # [N, ...]: b where the label flips, a elsewhere.
        return np.where(flip.reshape(flip.shape + (1,) * (a.ndim - 1)), b, a)

    return PairRows(chosen=pick(rows.chosen, rows.rejected),
                    rejected=pick(rows.rejected, rows.chosen),
                    chosen_length=pick(rows.chosen_length, rows.rejected_length),
                    rejected_length=pick(rows.rejected_length, rows.chosen_length),
                    prompt_length=rows.prompt_length,
                    gold_order=np.where(flip, -rows.gold_order, rows.gold_order))


def draw(rows: Mapping[str, jax.Array], key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
    """A batch of B pairs drawn uniformly with replacement ({'chosen': [B, W], ...})."""
    n = rows["chosen"].shape[0]
    index = jax.random.randint(key, (batch_size,), 0, n)
    return {k: jnp.take(rows[k], index, axis=0) for k in KEYS}


def pair_log_probs(model: model_lib.Model, params: Any,
                   batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(log p(chosen) [B], log p(rejected) [B]): sums over each completion and its EOS, both
    sides in one forward pass of 2B rows (trl's concatenated forward)."""
    half = batch["chosen"].shape[0]
    tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])  # [2B, W]
    prompt = jnp.concatenate([batch["prompt_length"], batch["prompt_length"]])  # [2B]
    length = jnp.concatenate([batch["chosen_length"], batch["rejected_length"]])  # [2B]
    log_p = training.completion_log_prob(model, params, tokens, prompt, length)  # [2B]
    return log_p[:half], log_p[half:]


def margins(model: model_lib.Model, params: Any, reference_params: Any,
            rows: Mapping[str, jax.Array], beta: float = dpo.BETA) -> jax.Array:
    """[N] beta * delta of every pair of `rows` (as ordered there): the inputs x of f_theta."""
    chosen, rejected = pair_log_probs(model, params, rows)  # [N] each
    ref_chosen, ref_rejected = pair_log_probs(model, reference_params, rows)  # [N] each
    return beta * ((chosen - ref_chosen) - (rejected - ref_rejected))


def gold_scores(model: model_lib.Model, params: Any, reference_params: Any,
                rows: Mapping[str, jax.Array], beta: float = dpo.BETA) -> dict[str, jax.Array]:
    """DPO's loss and the preference accuracy (the fraction of pairs with beta delta > 0) of
    `params` on every pair of `rows` (gold-ordered: `gold_ordered(...).batch()`), at once.

    Returns {'loss': [], 'accuracy': []}.
    """
    x = margins(model, params, reference_params, rows, beta)  # [N]
    return {"loss": jnp.mean(-jax.nn.log_sigmoid(x)),
            "accuracy": jnp.mean((x > 0).astype(jnp.float32))}


def preference_problem(model: model_lib.Model, optimizer: optax.GradientTransformation,
                       train_rows: PairRows, valid_rows: PairRows, *, reference_params: Any,
                       batch_size: int, valid_batch_size: int, beta: float = dpo.BETA,
                       mesh=None) -> base.InnerProblem:
    """Training the policy on the labelled `train_rows` with the preference loss theta, scored
    by DPO's loss on the gold-ordered `valid_rows` (module docstring).

    reference_params: the SFT policy: where every run starts, and the frozen reference.
    optimizer: differentiable for TBPTT (`train.constant_adam`).
    mesh: when it has a `data` axis, each inner and meta-loss batch of pairs is split over it
    (under a population vmap with `spmd_axis_name='pop'` the pairs then shard over `pop` x
    `data`), as in `lm_problem.lm_problem`.
    """
    train = {k: jnp.asarray(v) for k, v in train_rows.batch().items()}
    valid = {k: jnp.asarray(v) for k, v in gold_ordered(valid_rows).batch().items()}
    reference = jax.tree.map(jnp.asarray, reference_params)

    def shard(batch):
        if mesh is None or mesh.shape.get("data", 1) == 1:
            return batch
        rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, rows), batch)

    def reference_log_probs(batch):
        return jax.lax.stop_gradient(pair_log_probs(model, reference, batch))

    def init(key):
        del key  # Every run starts from the SFT policy.
        return {"params": reference, "opt_state": optimizer.init(reference),
                "step": jnp.zeros((), jnp.int32)}

    def step(theta, inner, key):
        batch = shard(draw(train, key, batch_size))
        ref_chosen, ref_rejected = reference_log_probs(batch)  # [B] each

        def loss(params):
            chosen, rejected = pair_log_probs(model, params, batch)
            return learned.preference_loss(theta, chosen, rejected, ref_chosen, ref_rejected,
                                           beta=beta)[0]

        grads = jax.grad(loss)(inner["params"])
        updates, opt_state = optimizer.update(grads, inner["opt_state"], inner["params"])
        return dict(inner, params=optax.apply_updates(inner["params"], updates),
                    opt_state=opt_state, step=inner["step"] + 1)

    def meta_loss(inner, key):
        batch = shard(draw(valid, key, valid_batch_size))
        chosen, rejected = pair_log_probs(model, inner["params"], batch)
        return dpo.loss(chosen, rejected, *reference_log_probs(batch), beta=beta)[0]

    return base.InnerProblem(init=init, step=step, meta_loss=meta_loss)
