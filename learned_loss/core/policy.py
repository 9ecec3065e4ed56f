"""A trained policy loaded from a run's workdir: its resolved config, model and parameters.

Any workdir written by `learned_loss.core.loop.run` (pre-training, fine-tuning) holds what is
needed: `provenance.json` records the resolved config of every start, and `checkpoints/` the states.
The newest good checkpoint is read without changing anything in the workdir (read-only restore), so
evaluating or sampling from a run never races with, or damages, the run itself.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import ml_collections

from learned_loss.core import cli, files, provenance, train
from learned_loss.core import checkpoint as checkpoint_lib
from learned_loss.core import model as model_lib


class Policy(NamedTuple):
    workdir: str
    config: ml_collections.ConfigDict  # The run's resolved config (its latest start).
    model: model_lib.Model
    params: Any
    step: int  # The checkpoint's step.


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config of the run's latest start, from its provenance.json."""
    starts = provenance.read(workdir) if files.isdir(workdir) else []
    if not starts:
        raise cli.UserError(f"{workdir} has no provenance.json; pass the workdir of a "
                            f"pre-training or fine-tuning run")
    return ml_collections.ConfigDict(starts[-1]["config"])


def restore_params(workdir: str, config: ml_collections.ConfigDict,
                   model: model_lib.Model) -> tuple[Any, int]:
    """(params, step) of the newest good checkpoint in `workdir`, read-only, on this process's
    first device (every host of a multi-host job reads its own whole copy)."""
    optimizer = train.make_optimizer(config.optimizer, config.train.num_steps)
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here),
        jax.eval_shape(lambda: train.init_state(model, optimizer, jax.random.key(0),
                                                config.data.seq_len)))
    restored = checkpoint_lib.Checkpointer(workdir, read_only=True).restore_latest(
        abstract, model_config=config.model.to_dict())
    if restored is None:
        raise cli.UserError(f"{workdir} holds no readable checkpoint; pass a run that has "
                            f"saved at least one")
    return restored.state.params, restored.step


def load(workdir: str, model: model_lib.Model | None = None) -> Policy:
    """The policy of `workdir`; pass `model` to reuse one already built (it must match)."""
    config = run_config(workdir)
    if model is None:
        model = model_lib.build(model_lib.ModelConfig.from_config(config.model))
    params, step = restore_params(workdir, config, model)
    return Policy(workdir, config, model, params, step)
