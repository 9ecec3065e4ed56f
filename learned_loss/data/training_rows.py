"""Training rows: examples encoded as stacked arrays, the form every in-memory training run
(the token-level cells, meta-training's inner runs, the studies) draws its batches from.

`Demonstrations` holds rows [N, T] (inputs, targets, the loss mask) and which rows carry a
corrupted answer. Rows come from instruction-task records (`encode_records`), from examples
drawn in memory (`sample_demonstrations`) or from windows of a text corpus (`text_windows`);
a run draws a batch of rows uniformly with replacement from its key (`draw`).

Shapes: N rows, B batch, T sequence length.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from learned_loss.core import errors
from learned_loss.data import instruction_tasks, pipeline, tasks

KEYS = ("inputs", "targets", "mask")


class Demonstrations(NamedTuple):
    """Encoded examples stacked on a leading axis."""

    inputs: np.ndarray  # [N, T] int32
    targets: np.ndarray  # [N, T] int32
    mask: np.ndarray  # [N, T] float32: answer tokens and the EOS
    corrupted: np.ndarray  # [N] bool: the demonstrated answer is not the gold one

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def batch(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in KEYS}


def encode_records(records: Sequence[Mapping[str, Any]], seq_len: int, *,
                   gold: bool = False) -> Demonstrations:
    """Instruction-task records (instruction_tasks.load_split rows) as stacked arrays, in the
    order (family, index) so that the result does not depend on TFDS's write order; with
    `gold`, each record's gold answer instead of the demonstrated one (the same inputs, clean)."""
    examples = [(instruction_tasks.decode_record(r), r) for r in records]
    examples.sort(key=lambda e: (e[0]["family"], e[0]["index"]))
    rows = [tasks.encode_example(instruction_tasks.to_example(r, gold=gold), seq_len)
            for _, r in examples]
    if not rows:
        raise ValueError("no demonstrations to encode")
    return Demonstrations(
        inputs=np.stack([r["inputs"] for r in rows]).astype(np.int32),
        targets=np.stack([r["targets"] for r in rows]).astype(np.int32),
        mask=np.stack([r["mask"] for r in rows]).astype(np.float32),
        corrupted=np.array([bool(d["corrupted"]) and not gold for d, _ in examples]))


def sample_demonstrations(families: Sequence[str], rows: int, seq_len: int,
                          difficulties: Sequence[int], seed: int,
                          split: str = "train") -> Demonstrations:
    """`rows` clean examples of `split` (`tasks.partition`) drawn in memory, round-robin over
    `families` and, within each family, cycling over `difficulties`. Family f's draws come in
    order from rng([seed, index of f in the suite, 4217]), so they do not depend on the other
    families; an example longer than seq_len is drawn again, and so is a repeated input of an
    evaluation split ('validation', 'test': their inputs are distinct)."""
    names = tasks.family_names()
    streams = {f: np.random.default_rng([seed, names.index(f), 4217]) for f in families}
    seen: dict[str, set[str]] = {f: set() for f in families}
    drawn = {f: 0 for f in families}
    out = []
    while len(out) < rows:
        family = families[len(out) % len(families)]
        difficulty = difficulties[drawn[family] % len(difficulties)]
        drawn[family] += 1
        for _ in range(1000):
            example = tasks.partition.draw(family, streams[family], difficulty, split)
            fits = tasks.sequence_length(example) <= seq_len + 1
            if fits and (split == "train" or example.input_id not in seen[family]):
                break
        else:
            raise tasks.TaskError(
                f"family {family} at difficulty {difficulty} gave no further {split} input "
                f"within seq_len={seq_len} after {len(seen[family])} distinct ones; raise "
                f"seq_len, widen the difficulties or ask for fewer rows")
        seen[family].add(example.input_id)
        out.append(tasks.encode_example(example, seq_len))
    stack = {k: np.stack([r[k] for r in out]) for k in KEYS}
    return Demonstrations(stack["inputs"], stack["targets"], stack["mask"],
                          np.zeros((rows,), bool))


def text_windows(source: Sequence[Mapping[str, Any]], seq_len: int, count: int,
                 offset: float = 0.0) -> Demonstrations:
    """`count` windows of T = seq_len tokens spread evenly over a text corpus split (the first
    at `offset` of the stride), every target a loss token: [count, T] rows for pre-training."""
    windows = pipeline.Windows(pipeline.token_stream(source), seq_len)
    if windows.num_windows < count:
        raise errors.UserError(f"the text split holds {windows.num_windows} windows of {seq_len} "
                            f"tokens, fewer than the {count} asked for; ask for fewer windows "
                            f"or a shorter seq_len, or use a larger corpus")
    stride = windows.num_windows / count
    rows = [windows[int((i + offset) * stride)] for i in range(count)]
    inputs = np.stack([r["inputs"] for r in rows])  # [count, T]
    targets = np.stack([r["targets"] for r in rows])  # [count, T]
    return Demonstrations(inputs, targets, np.ones(inputs.shape, np.float32),
                          np.zeros((count,), bool))


def rows_hash(rows: Demonstrations) -> str:
    """A short sha256 of the rows' arrays: the data hash of in-memory demonstrations."""
    h = hashlib.sha256()
    for k in KEYS:
        h.update(np.ascontiguousarray(getattr(rows, k)).tobytes())
    return h.hexdigest()[:16]


def concatenate(parts: Sequence[Demonstrations]) -> Demonstrations:
    return Demonstrations(*[np.concatenate([getattr(p, f) for p in parts])
                            for f in Demonstrations._fields])


def stack(parts: Sequence[Demonstrations]) -> Demonstrations:
    """Row sets of equal size on a new leading axis ([S, N, T]: one per vmapped run)."""
    return Demonstrations(*[np.stack([getattr(p, f) for p in parts])
                            for f in Demonstrations._fields])


def draw_index(key: jax.Array, num_rows: int, batch_size: int) -> jax.Array:
    """[B] int32: the rows `draw` takes, uniformly with replacement."""
    return jax.random.randint(key, (batch_size,), 0, num_rows)


def take(rows: Mapping[str, jax.Array], index: jax.Array) -> dict[str, jax.Array]:
    """The batch [B, T] of rows `index` [B]."""
    return {k: jnp.take(rows[k], index, axis=0) for k in KEYS}


def draw(rows: Mapping[str, jax.Array], key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
    """A batch [B, T] of rows drawn uniformly with replacement."""
    return take(rows, draw_index(key, rows["inputs"].shape[0], batch_size))


_draw = jax.jit(draw, static_argnums=2)


class UniformBatches:
    """A data iterator (the `loop.run` kind: next, get_state, set_state) of batches drawn by
    `draw` from in-memory rows, batch i from keys[i]: the batches of an in-memory run keyed the
    same way (`learned_loss.meta.base.step_keys`), so a sharded run can take exactly the steps of
    a token-level cell. Yields this process's contiguous block of each global batch."""

    def __init__(self, rows: Demonstrations, keys: jax.Array, global_batch_size: int, *,
                 process_index: int = 0, process_count: int = 1):
        if global_batch_size % process_count:
            raise errors.UserError(f"global batch {global_batch_size} does not divide over "
                                   f"{process_count} processes; choose a multiple")
        self._rows = {k: jnp.asarray(v) for k, v in rows.batch().items()}
        self._keys = keys  # [num_steps] typed keys
        self._batch = global_batch_size
        self._local = slice(process_index * global_batch_size // process_count,
                            (process_index + 1) * global_batch_size // process_count)
        self._hash = rows_hash(rows)
        self._next = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._next >= len(self._keys):
            raise StopIteration
        batch = _draw(self._rows, self._keys[self._next], self._batch)
        self._next += 1
        return {k: np.asarray(v[self._local]) for k, v in batch.items()}  # [B / hosts, T]

    def get_state(self) -> dict[str, Any]:
        return {"next_index": self._next, "sampler": "uniform", "rows": self._hash,
                "global_batch_size": self._batch}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resumes at the saved position; ValueError for a state of other rows or batches."""
        mine = self.get_state()
        for key in ("sampler", "rows", "global_batch_size"):
            if state.get(key) != mine[key]:
                raise ValueError(f"data iterator state has {key}={state.get(key)!r} but this "
                                 f"run has {key}={mine[key]!r}; resume with the same data config")
        self._next = int(state["next_index"])
