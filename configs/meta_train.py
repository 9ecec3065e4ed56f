"""Meta-training a learned token loss on noisy demonstrations (experiments/meta_train.py).

  python -m experiments.meta_train --config=configs/meta_train.py:tiny --workdir=/tmp/meta
  python -m experiments.finetune --config=configs/finetune.py:tiny \
      --config.objective=learned_token_loss --config.objective.path=/tmp/meta/artifact

Offline mode: many short inner runs (fine-tuning a fresh model on `tasks.families` with label
noise) score theta by the clean answer log-likelihood of validation inputs; the outer loop learns
theta with `estimator.name` (tbptt, es, pes or full_es); the result is WORKDIR/artifact. Online
mode (Meta-Weight-Net): one model is trained for `online.num_steps`, theta updated before each
step by TBPTT over `online.lookahead` look-ahead steps on a clean validation batch.

Families: `tasks.families` (the inner runs' tasks) and `meta_valid.families` (outer validation:
fresh inner runs on other tasks under the current theta) are both drawn from the task suite's
training splits; held-out families are never used. Variants: `smoke` (seconds, for tests),
`tiny` (the noisy-demonstration setting: 4 families, nano model, 30% swapped answers;
`--config.tasks.noise_kinds` picks another corruption), `swap50` (the grid's swap50 cells'
setting: PES over runs of up to their 800 steps, with the row-history features; the
comparison's learned_pes arm), `text` (pre-training on the text corpus), `paper` (a pod slice:
the paper model, PES over 64 pairs split over `pop`; dry-run it with
`python -m experiments.dry_run --config=configs/meta_train.py:paper --topology=v5e:16x16`).
"""

import ml_collections

from configs import models, objectives, outer_loop, tasks
from learned_loss.objectives import learned

# Four meta-train families with integer answers (off-by-one noise applies), two of them often
# of several characters (a dropped last character applies), each with far more distinct inputs
# at difficulty 1 than its validation split needs (`tasks.input_space`), within seq_len 48.
# None of them is an evaluation family of configs/compare.py or configs/noisy_demonstrations.py.
NOISY_FAMILIES = ("list_length", "count_vowels", "list_max", "list_sum")
# Outer validation (all within seq_len 48, each with at least 196 validation inputs at
# difficulty 1): theta is never trained on these.
META_VALID_FAMILIES = ("count_words", "add_three", "remove_vowels", "duplicate_chars")

VARIANTS = {
    # model, seq_len, batch, examples/family, estimator, population, K, horizons, outer steps.
    "smoke": dict(model="nano", seq_len=64, batch=8, examples=40, families=("uppercase", "wrap_brackets"),
                  valid_families=META_VALID_FAMILIES[:1], estimator="tbptt", population=2,
                  unroll=2, horizon=(4, 8), steps=4, log=1, eval=2, ckpt=2, eval_horizon=4,
                  sanity_steps=3, online_steps=6),
    "tiny": dict(model="nano", seq_len=48, batch=32, examples=500, families=NOISY_FAMILIES,
                 valid_families=META_VALID_FAMILIES, estimator="tbptt", population=2,
                 unroll=5, horizon=(50, 300), steps=150, log=10, eval=50, ckpt=50,
                 eval_horizon=300, sanity_steps=20, online_steps=1500),
    # The regime of configs/noisy_demonstrations.py's swap50 cells (50% swapped answers, nano,
    # 800 steps of 32 rows): PES over whole runs (log-uniform horizons up to the cells' 800
    # steps, so that theta is scored late in training, when the swapped answers are memorised),
    # with the row-history features.
    "swap50": dict(model="nano", seq_len=48, batch=32, examples=500, families=NOISY_FAMILIES,
                   valid_families=META_VALID_FAMILIES, estimator="pes", population=8,
                   unroll=40, horizon=(200, 800), steps=150, log=10, eval=50, ckpt=10,
                   eval_horizon=800, sanity_steps=20, online_steps=800),
    # Pre-training on the text corpus (data.source='text'): inner runs train the scaling
    # study's middle model (configs/scaling.py) from scratch; theta is scored by the
    # validation NLL of every token.
    "text": dict(model="nano", seq_len=64, batch=32, examples=0, families=(),
                 valid_families=(), estimator="tbptt", population=2, unroll=5,
                 horizon=(50, 300), steps=100, log=10, eval=50, ckpt=25, eval_horizon=300,
                 sanity_steps=20, online_steps=0),
    # A pod slice (v5e:16x16; `python -m experiments.dry_run` compiles its outer step): the
    # noisy-demonstration setting with the paper model (base, ~85M), PES over 64 pairs whose
    # runs split over `pop` (mesh.shape.pop=-1: 64 on 256 chips, one pair per 4 chips) and
    # whose inner batches split over `data`.
    "paper": dict(model="base", seq_len=64, batch=32, examples=500, families=NOISY_FAMILIES,
                  valid_families=META_VALID_FAMILIES, estimator="pes", population=64,
                  unroll=20, horizon=(200, 2000), steps=1000, log=10, eval=50, ckpt=10,
                  eval_horizon=1000, sanity_steps=20, online_steps=2000),
}

# swap50 with one weight per row (granularity 'row': row features standardised across the
# batch, weights normalised to mean 1) and the run's progress among the features.
VARIANTS["swap50_rows"] = VARIANTS["swap50"]

# The row-level weight's inputs (swap50_rows): each averaged over the row's answer and
# standardised across the batch, and the run's progress.
ROW_FEATURES = ("answer_log_prob", "entropy", "length", "history_log_prob", "history_trend",
                "progress")
# The learned token loss's inputs on text: no reference model (pre-training starts from a
# random one) and no answer length (every window has the same).
TEXT_FEATURES = ("log_prob", "entropy", "max_log_prob", "position", "answer_log_prob")
# The text variant's model: scaling size s3 of configs/scaling.py.
TEXT_MODEL = dict(d_model=32, num_layers=2, num_heads=2, d_ff=128)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of configs/meta_train.py; choose one of "
                         f"{sorted(VARIANTS)}")
    v = VARIANTS[arg]
    config = ml_collections.ConfigDict()
    config.variant = arg
    config.seed = 0
    config.mode = "offline"  # or "online"
    config.objective = objectives.objective_config("learned_token_loss")

    config.model = models.model_config(v["model"], max_len=v["seq_len"])
    if arg == "smoke":  # A one-layer model: seconds to compile, for tests.
        config.model.update(d_model=32, num_layers=1, num_heads=2, d_ff=64)
    if arg == "swap50":  # From scratch the reference is a random model: not a feature.
        config.objective.features = tuple(f for f in learned.TOKEN_FEATURES + learned.HISTORY_FEATURES
                                          if f != "ref_log_prob")
    if arg == "swap50_rows":  # Row-level features, and where the run is (its 800 steps).
        config.objective.features = ROW_FEATURES
        config.objective.granularity = "row"
        config.objective.run_steps = v["horizon"][1]
    if arg == "text":
        config.model.update(TEXT_MODEL)
        config.objective.features = TEXT_FEATURES

    config.tasks = tasks.task_config()
    config.tasks.families = v["families"]
    config.tasks.examples_per_family = v["examples"]
    config.tasks.label_noise = 0.5 if arg.startswith("swap50") else 0.3
    config.tasks.noise_kinds = ("other_answer",)

    config.meta_valid = ml_collections.ConfigDict()
    config.meta_valid.families = v["valid_families"]
    # Inner steps of each outer-validation run (from scratch, under the current theta).
    config.meta_valid.horizon = v["eval_horizon"]

    config.data = ml_collections.ConfigDict()
    config.data.data_dir = ""  # Empty: $TFDS_DATA_DIR or ~/.cache/learned_loss/tfds.
    config.data.seq_len = v["seq_len"]
    # Clean validation inputs (the meta-objective) and clean test inputs (what an online run is
    # scored on); swap50 keeps the cells' 80% of the examples for training.
    config.data.valid_fraction = 0.1 if arg.startswith("swap50") else 0.2
    config.data.test_fraction = 0.1
    # 'tasks': noisy demonstrations of tasks.families; 'text': windows of the text corpus
    # (text_dir, pattern and corpus_valid_fraction as in configs/pretrain.py), `windows` of
    # the train split for inner runs and `valid_windows` of the validation split to score them.
    config.data.source = "text" if arg == "text" else "tasks"
    config.data.text_dir = ""  # Empty: the Python standard library source of this interpreter.
    config.data.pattern = "**/*.py"
    config.data.corpus_valid_fraction = 0.02
    config.data.windows = 4096
    config.data.valid_windows = 256

    config.inner = ml_collections.ConfigDict()
    config.inner.lr = 3e-3
    config.inner.batch_size = v["batch"]
    config.inner.valid_batch_size = v["batch"]
    config.inner.init_from = ""  # A pre-training workdir; empty: a fresh initialisation per run.

    config.estimator = outer_loop.estimator(v)
    # outer.sanity_steps: every candidate theta must lower the clean loss in a fresh run of
    # this many steps.
    config.outer = outer_loop.outer(v, lr=3e-3)

    config.online = ml_collections.ConfigDict()
    config.online.num_steps = v["online_steps"]
    config.online.lookahead = 1
    config.online.log_every = v["log"]
    config.online.checkpoint_every = v["ckpt"]

    config.eval = ml_collections.ConfigDict()
    config.eval.prompts_per_family = 32
    config.eval.max_new_tokens = 16

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = {"pop": -1, "data": 4} if arg == "paper" else {"pop": 1, "data": -1}
    # Slices of a multi-slice TPU each axis spans (their product: the slices); 1: one slice.
    config.mesh.dcn = {"pop": 1, "data": 1}
    return config
