"""Task diversity at a fixed budget (experiments/diversity.py), after Chung et al. 2022.

  python -m experiments.diversity --config=configs/diversity.py:tiny --workdir=/tmp/div

The pre-trained model (cached like configs/compare.py's, keyed by the hash of `pretrain`) is
fine-tuned by MLE on the first k families of a seeded order of the 52 meta-train families, for
k in `counts` (0: all), with the same `steps` x `batch` rows for every k, and scored by greedy
exact match and graded score on the 23 held-out families and on fresh inputs of the trained ones.

Variants: `smoke` (tests: counts 1 and 3, one seed, a few steps), `tiny` (counts 1, 3, 10, 30
and all; 3 seeds; 800 steps of 32 rows, the budget of configs/noisy_demonstrations.py:tiny).
"""

import ml_collections

from configs import models, optimizers, pretrain, tasks

VARIANTS = {
    # counts, seeds, steps, batch, rows, pre-training steps, prompts per family, seen families.
    "smoke": dict(counts=(1, 3), seeds=1, steps=4, batch=8, rows=16, pretrain_steps=6,
                  per_family=2, seen=2),
    "tiny": dict(counts=(1, 3, 10, 30, 0), seeds=3, steps=800, batch=32, rows=4096,
                 pretrain_steps=600, per_family=16, seen=10),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of configs/diversity.py; choose one of "
                         f"{sorted(VARIANTS)}")
    v = VARIANTS[arg]
    seq_len = 96  # Every family has examples within it at difficulties 1-3.
    config = ml_collections.ConfigDict()
    config.variant = arg
    config.counts = v["counts"]  # Numbers of training families; 0: all of them.
    config.seeds = v["seeds"]  # Each seed: its own family order, data and fine-tuning noise.
    config.steps = v["steps"]
    config.batch = v["batch"]
    config.rows = v["rows"]  # Demonstrations per subset, round-robin over its families.
    config.optimizer = optimizers.adamw(3e-3, max(1, v["steps"] // 10), weight_decay=0.0)

    config.tasks = tasks.task_config()  # families empty: the meta-train split's.
    # Up to 3: at difficulty 1 several held-out families have fewer distinct test inputs than
    # eval.per_family (parity has 10 inputs in all), and evaluation inputs are distinct.
    config.tasks.difficulty = (1, 3)
    config.data = ml_collections.ConfigDict()
    config.data.seq_len = seq_len

    config.cache_dir = ""  # Empty: $LEARNED_LOSS_CACHE or ~/.cache/learned_loss.
    config.pretrain = pretrain.cached("smoke" if arg == "smoke" else "tiny",
                                      models.model_config("nano", max_len=seq_len), seq_len,
                                      v["pretrain_steps"])

    config.eval = ml_collections.ConfigDict()
    config.eval.per_family = v["per_family"]
    config.eval.seen_families = v["seen"]  # Trained families scored on fresh inputs.
    config.eval.seed = 10_000  # The evaluation prompts (not those of any training seed).
    config.eval.batch_size = 64
    config.eval.max_new_tokens = 24
    return config
