"""Gold evaluation of a trained policy on a split of task families.

  python -m experiments.evaluate --checkpoint=/tmp/sft --split=heldout

`--checkpoint` is a run's workdir: its newest good checkpoint is scored, with the model, optimizer
and task-split settings recorded in its provenance.json. The result (per-family exact match,
graded score and completion length, their means over families, and KL(policy || reference) when
a reference run is known) is written to `<workdir>/eval_<split>.json`. The reference is
`--reference` if given, else the run the policy was initialised from (`init_from`), if any.
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

from configs import tasks as task_configs
from learned_loss.core import cli, distributed, evaluation, files, policy
from learned_loss.data import tasks

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Workdir of the run to evaluate.")
_SPLIT = flags.DEFINE_enum("split", "heldout", tasks.SPLIT_NAMES, "Which task families.")
_REFERENCE = flags.DEFINE_string("reference", None,
                                 "Workdir of the reference policy for KL (default: init_from).")
_PER_FAMILY = flags.DEFINE_integer("examples_per_family", 32, "Prompts per family.")
_DIFFICULTY = flags.DEFINE_list("difficulty", ["1", "3"], "A difficulty, or LO,HI drawn "
                                "uniformly (1..5). The prompts are distinct test inputs, and "
                                "at difficulty 1 alone several families have only a few.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Prompts generated together.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Longest completion.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the evaluation prompts and the KL samples.")


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]}")
    if not _CHECKPOINT.value:
        raise cli.UserError("--checkpoint is required: the workdir of the run to evaluate")
    distributed.initialize()
    difficulty = tasks.partition.parse_difficulty(_DIFFICULTY.value)
    workdir = _CHECKPOINT.value
    trained = policy.load(workdir)
    config, model, params, step = trained.config, trained.model, trained.params, trained.step

    reference_dir = _REFERENCE.value or config.get("init_from") or None
    reference = None
    if reference_dir:
        reference = policy.load(reference_dir, model).params

    split_cfg = config.get("tasks") or task_configs.task_config()
    families = tasks.families_for(_SPLIT.value, seed=split_cfg.split_seed,
                                  meta_valid_fraction=split_cfg.meta_valid_fraction,
                                  heldout_fraction=split_cfg.heldout_fraction)
    examples = evaluation.sample_examples(families, per_family=_PER_FAMILY.value,
                                          difficulty=difficulty, seed=_SEED.value)
    result = evaluation.evaluate(model, params, examples, batch_size=_BATCH.value,
                                 max_new_tokens=_MAX_NEW.value, reference_params=reference,
                                 rng=jax.random.key(_SEED.value))
    result.update(split=_SPLIT.value, checkpoint_step=step, reference=reference_dir,
                  difficulty=list(difficulty), seed=_SEED.value)
    path = files.write_json(os.path.join(workdir, f"eval_{_SPLIT.value}.json"), result)
    logging.info("%s split, step %d: %s -> %s", _SPLIT.value, step, result["overall"], path)


if __name__ == "__main__":
    cli.run(main)
