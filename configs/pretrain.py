"""MLE pre-training of the Transformer LM on a local text corpus.

  python -m experiments.pretrain --config=configs/pretrain.py:tiny --workdir=/tmp/pretrain

Variants: `smoke` (seconds: nano model on a slice of the corpus), `tiny` (minutes on 2 CPU
cores; `make demo`), `small` and `paper` (accelerators; `python -m experiments.dry_run
--config=configs/pretrain.py:paper --topology=v5e:16x16` compiles its step for a TPU pod).
Override any field on the command line, e.g. `--config.optimizer.lr=3e-4
--config.mesh.shape.model=2`.
"""

import ml_collections

from configs import models, objectives, optimizers, tasks

VARIANTS = {
    # model, seq_len, global batch, steps, lr, warm-up, log/eval/checkpoint every, corpus glob
    # and its validation fraction.
    "smoke": dict(model="nano", seq_len=64, batch=8, steps=30, lr=3e-3, warmup=5,
                  log=5, eval=10, ckpt=10, pattern="email/**/*.py", valid=0.1),
    "tiny": dict(model="tiny", seq_len=128, batch=16, steps=600, lr=2e-3, warmup=50,
                 log=20, eval=100, ckpt=100, pattern="**/*.py", valid=0.02),
    "small": dict(model="small", seq_len=256, batch=64, steps=20_000, lr=1e-3, warmup=500,
                  log=50, eval=500, ckpt=1000, pattern="**/*.py", valid=0.02),
    "paper": dict(model="base", seq_len=512, batch=256, steps=100_000, lr=6e-4, warmup=2000,
                  log=100, eval=1000, ckpt=2000, pattern="**/*.py", valid=0.02),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of configs/pretrain.py; choose one of "
                         f"{sorted(VARIANTS)}")
    v = VARIANTS[arg]
    config = ml_collections.ConfigDict()
    config.variant = arg
    config.seed = 0
    config.objective = objectives.objective_config("mle")

    config.model = models.model_config(v["model"], max_len=v["seq_len"])

    config.data = ml_collections.ConfigDict()
    config.data.text_dir = ""  # Empty: the Python standard library source of this interpreter.
    config.data.pattern = v["pattern"]
    config.data.valid_fraction = v["valid"]
    config.data.data_dir = ""  # Empty: $TFDS_DATA_DIR or ~/.cache/learned_loss/tfds.
    config.data.seq_len = v["seq_len"]
    config.data.global_batch_size = v["batch"]
    # Task-suite text mixed into the training corpus: this many examples of each training
    # family (tasks.train_split / tasks.families; never a held-out family). 0: none.
    config.data.task_mix_per_family = 0

    config.tasks = tasks.task_config()

    config.optimizer = optimizers.adamw(v["lr"], v["warmup"], weight_decay=0.1)

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = v["steps"]
    config.train.log_every = v["log"]
    config.train.eval_every = v["eval"]
    config.train.eval_batches = 4
    config.train.checkpoint_every = v["ckpt"]
    config.train.keep_checkpoints = 3
    config.train.async_checkpoints = True
    config.train.peak_flops_per_device = 0.0  # 0: datasheet value, or measured on CPU.

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = {"data": -1, "model": 1}
    # Slices of a multi-slice TPU each axis spans (their product: the slices); 1: one slice.
    config.mesh.dcn = {"data": 1, "model": 1}
    config.sharding = ml_collections.ConfigDict()
    config.sharding.rules = models.PARTITION_RULES
    return config


def cached(variant: str, model: ml_collections.ConfigDict, seq_len: int,
           steps: int) -> ml_collections.ConfigDict:
    """The pre-training of a job that keeps its checkpoint in a cache (configs/compare.py,
    configs/diversity.py): `variant`'s settings with `model` at `seq_len`, `steps` steps,
    evaluated and checkpointed once, at the end."""
    config = get_config(variant)
    config.model = model
    config.data.seq_len = seq_len
    config.train.num_steps = steps
    config.train.eval_every = steps
    config.train.checkpoint_every = steps
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 5)
    return config
