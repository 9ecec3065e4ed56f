"""Checkpoints: orbax CheckpointManager over the train state and a JSON metadata item.

Each checkpoint `<workdir>/checkpoints/<step>/` holds
  state/  the TrainState (params, optimizer state, step, rng), sharded arrays via orbax;
  meta/   JSON: the data iterator state, the model config, and a fingerprint of the state.

Saves are atomic (orbax writes to a temporary directory and renames it when complete) and the
last `keep` are kept. On restore, the newest checkpoint whose metadata reads and whose state
matches its fingerprint wins; one that fails is moved to `<workdir>/checkpoints_corrupt/` with a
warning (never deleted), and the previous one is tried.

The workdir may be in a bucket (`gs://...`): orbax writes through etils.epath and tensorstore's
own GCS driver, and files.py moves a bad checkpoint aside.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from learned_loss.core import errors, files, hosts

CORRUPT_DIR = "checkpoints_corrupt"


class CheckpointMismatchError(errors.UserError):
    """The workdir holds checkpoints of a different model than the config asks for."""


class Restored(NamedTuple):
    step: int
    state: Any
    meta: dict


@jax.jit
def fingerprint(tree: Any) -> jax.Array:
    """[2 * leaves] float32: the sum and the sum of squares of every leaf.

    Saved with each checkpoint and checked after restoring, so that damaged array files that
    still decode are caught instead of silently resuming from garbage.
    """
    leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]
    return jnp.stack([f(x) for x in leaves for f in (jnp.sum, lambda y: jnp.sum(y * y))])


def _fingerprint_matches(saved: list, restored: np.ndarray) -> bool:
    saved = np.asarray(saved, np.float32)
    return saved.shape == restored.shape and np.allclose(saved, restored, rtol=1e-4, atol=1e-6)


class Checkpointer:
    """Save, restore-with-fallback and keep-last-N over `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, *, keep: int = 1, async_save: bool = True,
                 read_only: bool = False, this_process_only: bool = False):
        """Opens `<workdir>/checkpoints`.

        Args:
          workdir: the run's folder.
          keep: how many of the newest checkpoints to keep.
          async_save: write checkpoints in a background thread.
          read_only: only restore (another run's checkpoints, e.g. fine-tuning from a
            pre-training run): nothing is written, created or moved.
          this_process_only: saved by this process alone, with no other host taking part (a
            state that every host of a multi-host job holds whole, saved by process 0).
        """
        self.workdir = files.absolute(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self._keep = keep
        self._async = async_save
        self._read_only = read_only
        # Saved by this process while other processes of the job take no part.
        self._alone = this_process_only and jax.process_count() > 1
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self._keep, create=not self._read_only and not self._alone,
            cleanup_tmp_directories=not self._read_only, read_only=self._read_only,
            enable_async_checkpointing=self._async)
        if self._alone:  # orbax leaves the folder to a manager of a subset of the processes.
            me = jax.process_index()
            files.makedirs(self.directory)
            options.multiprocessing_options = ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"process{me}")
        return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Saves `state` and JSON `meta` (plus the state's fingerprint) as checkpoint `step`."""
        meta = dict(meta, fingerprint=np.asarray(fingerprint(state)).tolist())
        if self._alone:
            # orbax refuses host-local jax.Arrays in a multi-process job; their values it takes.
            state = jax.tree.map(np.asarray, state)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        """Blocks until an asynchronous save has finished writing."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def restore_latest(self, abstract_state: Any, *, model_config: dict) -> Optional[Restored]:
        """Restores the newest good checkpoint into the shardings of `abstract_state`.

        Args:
          abstract_state: a pytree of jax.ShapeDtypeStruct with `.sharding` set.
          model_config: the run's model config; a checkpoint of another model is an error.
        Returns:
          None when there is no checkpoint; raises CheckpointMismatchError when the newest
          readable checkpoint belongs to a different model.
        """
        for step in reversed(self.steps()):
            try:
                meta = self._manager.restore(
                    step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            except Exception as e:  # pylint: disable=broad-except
                self._quarantine(step, f"its metadata does not read ({_short(e)})")
                continue
            if _shape_fields(meta.get("model")) != _shape_fields(model_config):
                raise CheckpointMismatchError(
                    f"{self.directory} holds checkpoints of a different model "
                    f"({_model_diff(meta.get('model'), model_config)}); use a new --workdir or "
                    f"the model config that wrote them")
            try:
                state = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state))).state
            except Exception as e:  # pylint: disable=broad-except
                self._quarantine(step, f"its arrays do not read ({_short(e)})")
                continue
            if not _fingerprint_matches(meta.get("fingerprint", []), np.asarray(fingerprint(state))):
                self._quarantine(step, "its arrays do not match the fingerprint saved with it")
                continue
            return Restored(step=step, state=state, meta=meta)
        return None

    def _quarantine(self, step: int, why: str) -> None:
        """Moves a bad checkpoint aside (kept for inspection) and reopens the manager."""
        if self._read_only:
            logging.warning("checkpoint %d in %s is unusable: %s; trying the previous one", step,
                            self.directory, why)
            return
        target = os.path.join(self.workdir, CORRUPT_DIR, str(step))
        logging.warning("checkpoint %d in %s is unusable: %s; moving it to %s and falling back "
                        "to the previous checkpoint", step, self.directory, why, target)
        if hosts.is_writer():
            files.makedirs(os.path.dirname(target))
            files.replace_dir(os.path.join(self.directory, str(step)), target)
        hosts.barrier(f"quarantine checkpoint {step}")
        self._manager.close()
        self._manager = self._open()


def finished(workdir: str, step: int) -> bool:
    """Whether `workdir` holds a checkpoint at `step` (a run that reached it)."""
    if not files.isdir(os.path.join(workdir, "checkpoints")):
        return False
    return step in Checkpointer(workdir, read_only=True).steps()


def reached(workdir: str, step: int) -> bool:
    """Whether the newest checkpoint in `workdir` is at `step` or later (read-only)."""
    if not files.isdir(os.path.join(workdir, "checkpoints")):
        return False
    ckpt = Checkpointer(workdir, read_only=True)
    steps = ckpt.steps()
    ckpt.close()
    return bool(steps) and steps[-1] >= step


def _shape_fields(model_config: Optional[dict]) -> Optional[dict]:
    """The model fields that decide the parameters' shapes and meaning.

    Left out: the variant's name, the matmul dtype, the initialisation scale, and max_len where
    positions are rotary (no parameter depends on it), so a checkpoint can be fine-tuned at
    another sequence length or run in bfloat16.
    """
    if not isinstance(model_config, dict):
        return None
    ignored = {"variant", "compute_dtype", "init_scale"}
    if model_config.get("positions") == "rotary":
        ignored.add("max_len")
    return {k: v for k, v in model_config.items() if k not in ignored}


def _short(error: Exception) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text[:200]


def _model_diff(saved: Optional[dict], wanted: dict) -> str:
    if not isinstance(saved, dict):
        return "no model config recorded"
    saved, wanted = _shape_fields(saved), _shape_fields(wanted)
    keys = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} here" for k in keys)
