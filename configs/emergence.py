"""Emergence and the metric (experiments/emergence.py), after Wei et al. 2022 and Schaeffer et
al. 2023.

  python -m experiments.emergence --config=configs/emergence.py:tiny --workdir=/tmp/emergence

Each model size (configs/scaling.py's) is pre-trained from scratch on the text corpus
(`pretrain`), then trained by MLE on uppercase and swapcase at difficulties 1-5 (answers of 3
to 17 tokens with the EOS) and scored at `checkpoints` evenly spaced steps of that training by
teacher forcing on test inputs (never in a training split), per answer-length bucket: exact
match, per-token accuracy p and p^L.

Variants: `smoke` (tests: two sizes, a few steps), `tiny` (five sizes, 2000 steps of text
pre-training and 1200 on the tasks, 6 checkpoints).
"""

import ml_collections

from configs import models, scaling, tasks

VARIANTS = {
    # sizes, steps, checkpoints, batch, train rows, eval rows; pre-training steps, windows,
    # corpus files and validation fraction.
    "smoke": dict(sizes=("s1", "s2"), steps=4, checkpoints=2, batch=8, rows=32, eval_rows=16,
                  pretrain_steps=3, windows=64, test_windows=16, pattern="email/**/*.py",
                  valid=0.1),
    # tiny: s1 to s5 (6.1k to 147k non-embedding parameters, 24x); s6 would add about 40
    # minutes on 2 CPU cores (2000 text steps and 1200 task steps at 442k parameters).
    "tiny": dict(sizes=("s1", "s2", "s3", "s4", "s5"), steps=1200, checkpoints=6,
                 batch=32, rows=8192, eval_rows=1024, pretrain_steps=2000, windows=32768,
                 pattern="**/*.py", valid=0.02),
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
    # The pre-training corpus (as in configs/pretrain.py): the Python standard library source
    # of this interpreter unless text_dir names another directory (smoke: its email package).
    config.data.text_dir = ""
    config.data.pattern = v["pattern"]
    config.data.data_dir = ""  # Empty: $TFDS_DATA_DIR or ~/.cache/learned_loss/tfds.
    config.data.corpus_valid_fraction = v["valid"]
    # Text pre-training of every size before the tasks: without it these sizes stay near
    # chance on copying tasks (per-token accuracy 0.18 after 3000 task steps at s4 and s6).
    config.pretrain = ml_collections.ConfigDict()
    config.pretrain.steps = v["pretrain_steps"]  # 0: train on the tasks from scratch.
    config.pretrain.windows = v["windows"]  # Train-split windows of seq_len tokens.
    config.pretrain.test_windows = v.get("test_windows", 256)  # of the corpus's test split
    config.pretrain.lr = 3e-3
    # Per-character maps of the input: the answer's i-th letter is a function of the input's.
    # Resolved through tasks.roles like every training path (held-out families are refused).
    config.tasks = tasks.task_config()
    config.tasks.families = ("uppercase", "swapcase")
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
