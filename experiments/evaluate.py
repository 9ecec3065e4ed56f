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
import ml_collections
from absl import flags, logging

from configs import tasks as task_configs
from learned_loss import checkpoint as checkpoint_lib
from learned_loss import cli, evaluation, provenance, train
from learned_loss import model as model_lib
from learned_loss.data import tasks

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Workdir of the run to evaluate.")
_SPLIT = flags.DEFINE_enum("split", "heldout", tasks.SPLIT_NAMES, "Which task families.")
_REFERENCE = flags.DEFINE_string("reference", None,
                                 "Workdir of the reference policy for KL (default: init_from).")
_PER_FAMILY = flags.DEFINE_integer("examples_per_family", 32, "Prompts per family.")
_DIFFICULTY = flags.DEFINE_integer("difficulty", 1, "Task difficulty (1..5).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Prompts generated together.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Longest completion.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the evaluation prompts and the KL samples.")


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config of the run's latest start, from its provenance.json."""
    starts = provenance.read(workdir) if os.path.isdir(workdir) else []
    if not starts:
        raise cli.UserError(f"{workdir} has no provenance.json; --checkpoint must be the workdir "
                            f"of a pre-training or fine-tuning run")
    return ml_collections.ConfigDict(starts[-1]["config"])


def restore_params(workdir: str, config, model: model_lib.Model):
    """The newest good checkpoint's parameters (read-only: nothing in the workdir changes)."""
    optimizer = train.make_optimizer(config.optimizer, config.train.num_steps)
    abstract = jax.eval_shape(lambda: train.init_state(model, optimizer, jax.random.key(0),
                                                       config.data.seq_len))
    restored = checkpoint_lib.Checkpointer(workdir, read_only=True).restore_latest(
        abstract, model_config=config.model.to_dict())
    if restored is None:
        raise cli.UserError(f"{workdir} holds no readable checkpoint")
    return restored.state.params, restored.step


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]}")
    if not _CHECKPOINT.value:
        raise cli.UserError("--checkpoint is required: the workdir of the run to evaluate")
    workdir = _CHECKPOINT.value
    config = run_config(workdir)
    model = model_lib.build(model_lib.ModelConfig.from_config(config.model))
    params, step = restore_params(workdir, config, model)

    reference_dir = _REFERENCE.value or config.get("init_from") or None
    reference = None
    if reference_dir:
        reference, _ = restore_params(reference_dir, run_config(reference_dir), model)

    split_cfg = config.get("tasks") or task_configs.task_config()
    families = tasks.families_for(_SPLIT.value, seed=split_cfg.split_seed,
                                  meta_valid_fraction=split_cfg.meta_valid_fraction,
                                  heldout_fraction=split_cfg.heldout_fraction)
    examples = evaluation.sample_examples(families, per_family=_PER_FAMILY.value,
                                          difficulty=_DIFFICULTY.value, seed=_SEED.value)
    result = evaluation.evaluate(model, params, examples, batch_size=_BATCH.value,
                                 max_new_tokens=_MAX_NEW.value, reference_params=reference,
                                 rng=jax.random.key(_SEED.value))
    result.update(split=_SPLIT.value, checkpoint_step=step, reference=reference_dir,
                  difficulty=_DIFFICULTY.value, seed=_SEED.value)
    path = evaluation.write_json(os.path.join(workdir, f"eval_{_SPLIT.value}.json"), result)
    logging.info("%s split, step %d: %s -> %s", _SPLIT.value, step, result["overall"], path)


if __name__ == "__main__":
    cli.run(main, user_errors=(tasks.TaskError, checkpoint_lib.CheckpointMismatchError))
