"""Emergence and the metric (experiments/emergence.py), after Wei et al. 2022 and Schaeffer et
al. 2023.

  python -m experiments.emergence --config=configs/emergence.py:tiny --workdir=/tmp/emergence

Each model size (configs/scaling.py's) is trained from scratch by MLE on uppercase and
reverse_string at difficulties 1-5 (answers of 3 to 17 tokens with the EOS) and scored at
`checkpoints` evenly spaced steps by teacher forcing on fresh examples, per answer-length
bucket: exact match, per-token accuracy p and p^L.

Variants: `smoke` (tests: two sizes, a few steps), `tiny` (six sizes, 1200 steps, 6 checkpoints).
"""

import ml_collections

from configs import models, scaling

VARIANTS = {
    # sizes, steps, checkpoints, batch, train rows, eval rows.
    "smoke": dict(sizes=("s1", "s2"), steps=4, checkpoints=2, batch=8, rows=32, eval_rows=16),
    "tiny": dict(sizes=("s1", "s2", "s3", "s4", "s5", "s6"), steps=1200, checkpoints=6,
                 batch=32, rows=4096, eval_rows=1024),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of configs/emergence.py; choose one of "
                         f"{sorted(VARIANTS)}")
    v = VARIANTS[arg]
    seq_len = 64
    config = ml_collections.ConfigDict()
    config.variant = arg
    config.seed = 0
    config.sizes = {name: scaling.SIZES[name] for name in v["sizes"]}
    config.size_order = v["sizes"]
    config.model = models.model_config("nano", max_len=seq_len)  # Dimensions set per size.
    config.data = ml_collections.ConfigDict({"seq_len": seq_len})
    config.families = ("uppercase", "reverse_string")
    config.difficulties = (1, 2, 3, 4, 5)  # Cycled within each family: answer lengths 3-17.
    config.steps = v["steps"]
    config.checkpoints = v["checkpoints"]
    config.batch = v["batch"]
    config.lr = 3e-3
    config.rows = v["rows"]
    config.eval_rows = v["eval_rows"]
    # Answer-length buckets [edge_i, edge_{i+1}) in tokens (answer bytes and the EOS).
    config.buckets = (3, 6, 9, 12, 18)
    config.threshold = 0.5  # The exact match that counts as the "jump".
    return config
