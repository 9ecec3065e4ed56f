"""The task-suite settings shared by every config: which families are held out, and how tasks
are sampled. One split seed for the whole project keeps the held-out families the same in
pre-training (task mixing), fine-tuning, meta-training and evaluation."""

import ml_collections


def task_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.split_seed = 0
    config.meta_valid_fraction = 0.15
    config.heldout_fraction = 0.25
    # Training families: the families of `train_split` ('meta_train' or 'meta_valid'), or an
    # explicit tuple in `families` (a held-out family there is an error).
    config.train_split = "meta_train"
    config.families = ()
    config.examples_per_family = 2000
    # (low, high): each example's difficulty is drawn uniformly from it; (d, d) for one.
    config.difficulty = (1, 1)
    config.label_noise = 0.0  # Fraction of training demonstrations with a corrupted answer.
    # Corruption kinds a corrupted demonstration draws from uniformly (instruction_tasks.NOISE_KINDS
    # lists them all). This default keeps the datasets built before the knob existed; e.g.
    # ("off_by_one",) gives systematic noise that a high loss does not give away.
    config.noise_kinds = ("other_answer", "truncated", "appended")
    config.seed = 0  # Seeds the example streams (not the split).
    return config
