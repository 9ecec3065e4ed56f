"""The objective of a training run, chosen by name, with the knobs of every objective.

  --config.objective=loss_truncation --config.objective.drop_fraction=0.3
  --config.objective=learned_token_loss --config.objective.path=/tmp/meta/artifact

`--config.objective=NAME` replaces the whole section with NAME's defaults, so it must come
before any `--config.objective.FIELD` override (absl refuses the other order). Names: see
`learned_loss.objectives.TOKEN_OBJECTIVES`.
"""

import ml_collections
from absl import flags
from ml_collections import config_flags

from learned_loss import objectives

# The objectives of pre-training and fine-tuning (losses on the model's logits).
NAMES = objectives.TOKEN_OBJECTIVES


class ObjectiveConfig(ml_collections.ConfigDict):
    """The `objective` section: a ConfigDict that a bare name on the command line replaces."""


def objective_config(name: str = "mle") -> ObjectiveConfig:
    if name not in NAMES:
        raise ValueError(f"unknown objective {name!r}; choose one of {NAMES}")
    # path: a learned objective's meta-training artifact (experiments/meta_train.py writes it
    #   under WORKDIR/artifact); empty: the objective's initialisation (MLE for the token loss).
    # features, hidden: the learned token loss's inputs and width when there is no `path`.
    # drop_fraction, warmup_steps: loss truncation (Kang and Hashimoto 2020): after
    #   `warmup_steps` of MLE, drop the `drop_fraction` of each batch's highest-loss examples.
    # q: generalized cross-entropy (Zhang and Sabuncu 2018), in (0, 1].
    # sce_alpha, sce_beta: symmetric cross-entropy (Wang et al. 2019), the weights of CE and RCE.
    # bootstrap_beta, bootstrap_kind: bootstrapping (Reed et al. 2015), the label's weight in
    #   the target and 'soft' or 'hard'.
    return ObjectiveConfig(dict(name=name, **objectives.DEFAULTS))


class _NameParser(flags.ArgumentParser):
    """Parses `--config.objective=NAME` into that objective's default section."""

    def parse(self, argument):
        if isinstance(argument, ObjectiveConfig):
            return argument
        return objective_config(str(argument))

    def flag_type(self):
        return "objective name"


config_flags.register_flag_parser_for_type(ObjectiveConfig, _NameParser())
