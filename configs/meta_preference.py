"""Meta-training a learned preference loss on noisy preference labels (experiments/meta_train.py).

  python -m experiments.meta_train --config=configs/meta_preference.py:tiny --workdir=/tmp/mpref
  python -m experiments.interpret_objective --config=configs/meta_preference.py:tiny \
      --workdir=/tmp/mpref_why --config.interpret.artifact=/tmp/mpref/artifact
  python -m experiments.rlhf --config=configs/rlhf.py:easy --workdir=/tmp/rlhf \
      --config.sft_from=/tmp/sft --config.dpo.loss_type=learned \
      --config.dpo.learned_path=/tmp/mpref/artifact

The inner run is DPO (Rafailov et al. 2023) under the learned curve f_theta(beta delta)
(DiscoPOP-style, Lu et al. 2024; exactly DPO at the start) on preference pairs of `tasks.families`
whose labels the simulated labeler gave (`preferences.tau`) and of which a fraction
`preferences.flip_rate` was then flipped: the label-noise setting that a robust preference loss
is for (cDPO, robust DPO). The meta-loss is DPO's loss on the same families' validation pairs in
the gold order; the outer loop learns theta with `estimator.name` (tbptt, es, pes or full_es).
Every inner run starts from the reference policy: a fresh model after `sft.steps` of MLE on the
gold answers of the pairs' prompts (or `inner.init_from`, a fine-tuning workdir). Meta-validation
runs fresh inner runs on `meta_valid.families` (never trained on) under theta and under DPO.
The result is WORKDIR/artifact, a `learned_preference_loss`.

Variants: `smoke` (seconds, for tests: a one-layer model, two families), `tiny` (eight short
meta-train families, nano model, 30% flipped labels; 11.5 minutes on 2 CPU cores shared with
other jobs).
"""

import ml_collections

from configs import models, outer_loop, tasks

# Meta-train families whose prompts, gold answers and corruptions fit 64 tokens and whose
# inputs at difficulty 1 are plenty for their validation pairs; none of them is an evaluation
# family of configs/compare.py.
TRAIN_FAMILIES = ("uppercase", "reverse_string", "list_sum", "list_max", "first_char",
                  "modulo", "wrap_brackets", "wrap_quotes")
# Outer validation: theta is never trained on these.
META_VALID_FAMILIES = ("add_three", "duplicate_chars", "count_words", "remove_vowels")

VARIANTS = {
    # seq_len, pairs/family, inner batch, SFT steps, K, horizons, outer steps, eval horizon.
    # smoke: ES, whose program (no second-order backward) compiles in half TBPTT's time.
    "smoke": dict(model="nano", seq_len=48, pairs=40, batch=8, sft_steps=2,
                  families=("list_sum", "modulo"), valid_families=META_VALID_FAMILIES[:1],
                  estimator="es", population=1, unroll=2, horizon=(4, 8), steps=4, log=1,
                  eval=2, ckpt=2, eval_horizon=4, sanity_steps=3, interpret_steps=4),
    "tiny": dict(model="nano", seq_len=64, pairs=250, batch=16, sft_steps=300,
                 families=TRAIN_FAMILIES, valid_families=META_VALID_FAMILIES, estimator="tbptt",
                 population=2,
                 unroll=5, horizon=(20, 60), steps=50, log=5, eval=25, ckpt=25,
                 eval_horizon=60, sanity_steps=10, interpret_steps=60),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of configs/meta_preference.py; choose one of "
                         f"{sorted(VARIANTS)}")
    v = VARIANTS[arg]
    config = ml_collections.ConfigDict()
    config.variant = arg
    config.seed = 0
    config.mode = "offline"  # The preference loss is meta-trained offline only.
    config.objective = ml_collections.ConfigDict()
    config.objective.name = "learned_preference_loss"
    config.objective.hidden = 16  # Width of h_theta.
    config.objective.path = ""  # A learned_preference_loss artifact to warm-start from.

    config.model = models.model_config(v["model"], max_len=v["seq_len"])
    if arg == "smoke":  # A one-layer model: seconds to compile, for tests.
        config.model.update(d_model=32, num_layers=1, num_heads=2, d_ff=64)

    config.tasks = tasks.task_config()
    config.tasks.families = v["families"]

    # Pairs of each family's gold answer and corruptions, labelled by the simulated
    # Bradley-Terry labeler (learned_loss.data.preference_pairs), then flipped at random.
    config.preferences = ml_collections.ConfigDict()
    config.preferences.pairs_per_family = v["pairs"]
    config.preferences.difficulty = (1, 1)
    config.preferences.tau = 0.05  # Labeler temperature: at 0.05 it rarely errs by itself.
    config.preferences.length_bias = 0.0
    config.preferences.length_scale = 0.0  # L in bytes; 0: data.seq_len.
    # Fraction of each train split's labels swapped after labelling (validation pairs are read
    # in the gold order whatever the labels).
    config.preferences.flip_rate = 0.3
    config.preferences.seed = 0

    config.meta_valid = ml_collections.ConfigDict()
    config.meta_valid.families = v["valid_families"]
    # Inner steps of each outer-validation run (from the reference, under the current theta).
    config.meta_valid.horizon = v["eval_horizon"]

    config.data = ml_collections.ConfigDict()
    config.data.data_dir = ""  # Empty: $TFDS_DATA_DIR or ~/.cache/learned_loss/tfds.
    config.data.seq_len = v["seq_len"]  # T: a scored sequence has T + 1 tokens.
    config.data.valid_fraction = 0.2

    # The reference policy: a fresh model after `steps` steps of MLE on the gold answers.
    config.sft = ml_collections.ConfigDict()
    config.sft.steps = v["sft_steps"]
    config.sft.lr = 3e-3
    config.sft.batch_size = 32

    config.inner = ml_collections.ConfigDict()
    # At 1e-2 ten DPO steps on clean pairs already raise their loss (every candidate fails the
    # sanity check); at 1e-3 they lower it, and the noisy labels still pull the gold loss above
    # log 2 within 60 steps.
    config.inner.lr = 1e-3
    config.inner.beta = 0.1  # DPO's beta (trl's default, and configs/rlhf.py's dpo.beta).
    config.inner.batch_size = v["batch"]
    config.inner.valid_batch_size = v["batch"]
    config.inner.init_from = ""  # A fine-tuning workdir: its newest checkpoint replaces the SFT.

    config.estimator = outer_loop.estimator(v)
    # outer.sanity_steps: every candidate theta must lower DPO's gold-order loss of clean
    # pairs in a fresh run.
    config.outer = outer_loop.outer(v, lr=1e-2)

    # experiments/interpret_objective.py: the artifact to read, and the inner run (under it, on
    # the training families) whose margins beta * delta set the range the closed forms fit.
    config.interpret = ml_collections.ConfigDict()
    config.interpret.artifact = ""
    config.interpret.steps = v["interpret_steps"]
    config.interpret.snapshots = 4

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = {"pop": 1, "data": -1}
    return config
