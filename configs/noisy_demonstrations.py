"""Fine-tuning from noisy demonstrations: MLE, its controls, loss truncation and the learned
token loss (offline and online), over noise kinds and seeds (experiments/noisy_demonstrations.py).

  python -m experiments.noisy_demonstrations --config=configs/noisy_demonstrations.py:tiny \
      --workdir=/tmp/noisy \
      --config.learned.artifacts.default=/tmp/meta/artifact

`family_sets.transfer` are the evaluation families: meta-train-split families that no learned
objective was meta-trained, validated or tuned on (learned_loss/studies/noisy_demonstrations.py
refuses an artifact whose meta-training used one). Each noise kind corrupts a fraction `rho` of the
training demonstrations with the given corruption kinds; swapped answers (`other_answer`) are given
away by a high loss, `off_by_one` (numeric answers) and `dropped_last_char` are systematic
corruptions that are not. `transfer.model` (4x the parameters) is trained with the objective learned
with `model`.
"""

import ml_collections

from configs import meta_train, models, tasks
from learned_loss import objectives
from learned_loss.core import train
from learned_loss.studies import token_arms

# Meta-train-split families never meta-trained on: integer, yes/no and string answers, each with
# at least 58 distinct test and 71 validation inputs at difficulty 1 (`tasks.input_space`), so
# that 10% of 500 examples a family are distinct inputs in each of those splits.
TRANSFER_FAMILIES = ("count_digits", "count_char", "is_palindrome", "repeat_string")
NOISES = {
    "swap30": dict(kinds=("other_answer",), rho=0.3),
    "off_by_one": dict(kinds=("off_by_one",), rho=0.3),
    "swap50": dict(kinds=("other_answer",), rho=0.5),
    "dropped_last_char": dict(kinds=("dropped_last_char",), rho=0.3),
}

VARIANTS = {
    "smoke": dict(steps=6, seeds=2, examples=20, noises=("swap30",),
                  methods=token_arms.METHODS, transfer_noises=(), per_family=4),
    "tiny": dict(steps=800, seeds=5, examples=500, noises=tuple(NOISES),
                 methods=token_arms.METHODS, transfer_noises=("swap30",), per_family=50),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of configs/noisy_demonstrations.py; choose "
                         f"one of {sorted(VARIANTS)}")
    v = VARIANTS[arg]
    seq_len = 48
    config = ml_collections.ConfigDict()
    config.variant = arg
    config.family_sets = {"transfer": TRANSFER_FAMILIES[:2] if arg == "smoke"
                          else TRANSFER_FAMILIES}
    # The family sets to run, in this order; the 4x model runs on the first.
    config.set_order = ("transfer",)
    config.noises = {k: NOISES[k] for k in v["noises"]}
    # The noise kinds to run, in this order (a ConfigDict iterates its keys sorted).
    config.noise_order = tuple(v["noises"])
    config.methods = v["methods"]
    config.seeds = v["seeds"]
    fine_tuning(config, arg, steps=v["steps"], examples=v["examples"], seq_len=seq_len)
    config.transfer = ml_collections.ConfigDict()
    # mini: 4x nano's non-embedding parameters (0.40M against 0.10M; 3.7x in all).
    config.transfer.model = models.model_config("mini", max_len=seq_len)
    config.transfer.methods = ("mle", "loss_truncation", "learned_offline")
    config.transfer.noises = v["transfer_noises"]
    # Meta-training artifacts by noise name, or 'default' for every noise kind.
    config.learned.artifacts = {"default": ""}
    # Closed forms fitted to them (experiments/interpret_objective.py), for learned_closed_form.
    config.learned.closed_forms = {"default": ""}

    # experiments/interpret_objective.py: the features are read off a model trained this many
    # steps with the learned loss on this (family set, noise).
    config.interpret = ml_collections.ConfigDict()
    config.interpret.family_set = "transfer"
    config.interpret.noise = v["noises"][0]
    config.interpret.steps = v["steps"] // 2

    config.eval = ml_collections.ConfigDict()
    config.eval.per_family = v["per_family"]
    config.eval.batch_size = 100
    config.eval.max_new_tokens = 12
    return config


def fine_tuning(config, arg: str, *, steps: int, examples: int, seq_len: int) -> None:
    """Adds what learned_loss/studies/noisy_demonstrations.py trains with (shared with
    configs/compare.py):
    the budget, the model, tasks and data splits, loss truncation and the online learned loss."""
    config.steps = steps
    # Every arm's inner optimizer (learned_loss.core.train.make_optimizer): clipped Adam at a
    # constant rate, differentiable (eps_root > 0) for the online arm's look-ahead.
    config.optimizer = ml_collections.ConfigDict(train.constant_adam(3e-3))
    config.batch_size = 32
    config.model = models.model_config("nano", max_len=seq_len)
    if arg == "smoke":
        config.model.update(d_model=32, num_layers=1, num_heads=2, d_ff=64)

    config.tasks = tasks.task_config()
    config.tasks.examples_per_family = examples
    # The noise comes from `noises` and the families from `family_sets` (or compare's
    # `families`): these task fields are not read, so they are gone (an override is an error).
    for key in ("label_noise", "noise_kinds", "families"):
        del config.tasks[key]
    config.data = ml_collections.ConfigDict()
    config.data.data_dir = ""  # Empty: $TFDS_DATA_DIR or ~/.cache/learned_loss/tfds.
    config.data.seq_len = seq_len
    # Validation and test hold distinct inputs (`tasks.partition`): 10% of 500 examples a
    # family fits the evaluation families' input spaces at difficulty 1.
    config.data.splits = {"train": 0.8, "validation": 0.1, "test": 0.1}

    config.loss_truncation = ml_collections.ConfigDict()
    config.loss_truncation.drop_fraction = 0.3
    config.loss_truncation.warmup_steps = steps // 5
    # The robust losses (learned_loss/objectives/robust.py) at their papers' settings, which
    # `tuning` replaces by the best of its grid.
    config.robust = ml_collections.ConfigDict(
        {k: objectives.DEFAULTS[k] for k in ("q", "sce_alpha", "sce_beta", "bootstrap_beta",
                                             "bootstrap_kind")})
    # mle_early_stop: greedy exact match on the clean validation examples this many times along
    # the run (the last at its end); the best parameters are kept.
    config.early_stopping = ml_collections.ConfigDict({"evaluations": 2 if arg == "smoke" else 8})
    # The hand-made baselines' settings chosen on families of their own
    # (learned_loss/studies/tuning.py): the offline learned loss's inner families, `seeds` runs
    # of every setting of `grids` (0 seeds: the settings above, untuned).
    config.tuning = ml_collections.ConfigDict()
    config.tuning.families = meta_train.NOISY_FAMILIES[:2] if arg == "smoke" else \
        meta_train.NOISY_FAMILIES
    config.tuning.seeds = 0 if arg == "smoke" else 3
    config.tuning.grids = ml_collections.ConfigDict({
        "loss_truncation": {"drop_fraction": (0.1, 0.2, 0.3, 0.5)},
        "gce": {"q": (0.3, 0.5, 0.7, 1.0)},
        "sce": {"sce_alpha": (0.1, 1.0), "sce_beta": (0.1, 1.0)},
        "bootstrap": {"bootstrap_beta": (0.6, 0.8, 0.95)},
    })

    config.learned = ml_collections.ConfigDict()
    config.learned.lookahead = 1
    config.learned.online_features = ("log_prob", "entropy", "max_log_prob", "position",
                                      "length", "answer_log_prob")
    config.learned.hidden = 32
    config.learned.online_outer = ml_collections.ConfigDict({"lr": 3e-3, "grad_clip": 1.0})
