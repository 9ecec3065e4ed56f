"""Scaling laws of MLE and of a learned token loss on the text corpus (experiments/scaling.py).

  python -m experiments.scaling --config=configs/scaling.py:tiny --workdir=/tmp/scaling

Every (objective, model size, token budget) is a pre-training run from scratch (configs/pretrain.py
with the size's dimensions and `steps` steps of `batch` windows of `seq_len` tokens, its own
warm-up and cosine decay), scored by the NLL of the same validation windows. The learned token
loss is meta-trained on the text corpus first (`meta`: configs/meta_train.py:text, the inner
runs on size s3) unless `artifacts.learned` names an artifact.

Sizes (d_model, layers, heads, d_ff = 4 d_model) and their non-embedding parameters
(12 L d^2, Kaplan et al. 2020): s1 16x2 6.1k, s2 24x2 13.8k, s3 32x2 24.6k, s4 48x3 83k,
s5 64x3 147k, s6 96x4 442k, s7 128x4 786k (128x from s1 to s7).

Variants: `smoke` (tests: three small sizes, two budgets), `tiny` (all seven sizes, three
budgets of 0.2M to 0.8M tokens).
"""

import ml_collections

from configs import meta_train, pretrain
from learned_loss.studies import scaling_laws

SIZES = {
    "s1": dict(d_model=16, num_layers=2, num_heads=2, d_ff=64),
    "s2": dict(d_model=24, num_layers=2, num_heads=2, d_ff=96),
    "s3": dict(d_model=32, num_layers=2, num_heads=2, d_ff=128),
    "s4": dict(d_model=48, num_layers=3, num_heads=4, d_ff=192),
    "s5": dict(d_model=64, num_layers=3, num_heads=4, d_ff=256),
    "s6": dict(d_model=96, num_layers=4, num_heads=4, d_ff=384),
    "s7": dict(d_model=128, num_layers=4, num_heads=4, d_ff=512),
}
OBJECTIVES = ("mle", "learned")

VARIANTS = {
    # sizes, steps per budget, global batch, seq_len, validation batches, meta-training.
    "smoke": dict(sizes=("s1", "s2", "s3"), steps=(4, 8), batch=8, seq_len=32, eval_batches=2,
                  meta_steps=2, horizon=(3, 6), windows=64),
    "tiny": dict(sizes=tuple(SIZES), steps=(100, 200, 400), batch=32, seq_len=64,
                 eval_batches=32, meta_steps=100, horizon=(50, 300), windows=4096),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of configs/scaling.py; choose one of "
                         f"{sorted(VARIANTS)}")
    v = VARIANTS[arg]
    config = ml_collections.ConfigDict()
    config.variant = arg
    config.objectives = OBJECTIVES
    config.sizes = {name: SIZES[name] for name in v["sizes"]}
    config.size_order = v["sizes"]  # A ConfigDict iterates its keys sorted.
    config.steps = v["steps"]  # One run per budget: tokens = steps * batch * seq_len.

    # The pre-training run of every point (model dimensions and steps set per run).
    p = pretrain.get_config("smoke" if arg == "smoke" else "tiny")
    p.model.update(SIZES["s3"])
    p.model.max_len = v["seq_len"]
    p.data.seq_len = v["seq_len"]
    p.data.global_batch_size = v["batch"]
    # The corpus: the standard library's Python files (smoke: its email package).
    p.data.pattern = "email/**/*.py" if arg == "smoke" else "**/*.py"
    p.data.valid_fraction = 0.1 if arg == "smoke" else 0.02
    p.train.eval_batches = v["eval_batches"]
    p.train.log_every = 50
    p.train.async_checkpoints = False
    p.train.keep_checkpoints = 1
    p.optimizer.lr = 3e-3
    config.pretrain = p
    config.warmup_fraction = 0.1  # Of each run's steps.

    # The learned token loss: meta-trained in WORKDIR/meta/learned unless artifacts.learned is
    # set. Its inner runs pre-train size s3 on the same corpus and windows.
    config.artifacts = ml_collections.ConfigDict({"learned": ""})
    m = meta_train.get_config("text")
    m.model.update(SIZES["s3"])
    m.model.max_len = v["seq_len"]
    m.data.seq_len = v["seq_len"]
    m.data.pattern, m.data.corpus_valid_fraction = p.data.pattern, p.data.valid_fraction
    m.data.windows = v["windows"]
    m.data.valid_windows = min(256, v["windows"])
    m.data.text_dir = p.data.text_dir
    m.outer.num_steps = v["meta_steps"]
    m.outer.eval_every = v["meta_steps"]
    m.estimator.min_horizon, m.estimator.max_horizon = v["horizon"]
    m.meta_valid.horizon = v["horizon"][1]
    if arg == "smoke":
        m.inner.batch_size = m.inner.valid_batch_size = v["batch"]
        m.outer.sanity_steps = 3
        m.estimator.unroll_length = 2
        m.outer.log_every = 1
    config.meta = m

    # Fits (learned_loss/studies/scaling_laws.py): bootstrap resamples, interval level, and the
    # starting values of (log A, log B, log E, alpha, beta) for the Chinchilla fit, every
    # combination tried (Hoffmann et al. 2022); smoke: the ends of each range, 32 starts of 243.
    config.fit = ml_collections.ConfigDict()
    config.fit.bootstrap = 200 if arg != "smoke" else 20
    config.fit.level = 0.95
    grid = scaling_laws.DEFAULT_GRID
    config.fit.grid = grid if arg != "smoke" else tuple((g[0], g[-1]) for g in grid)
    return config
