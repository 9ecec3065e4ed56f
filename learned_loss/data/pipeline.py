"""grain pipeline: documents -> one byte-token stream -> packed LM batches.

Every document becomes `[BOS] + utf8 bytes + [EOS]`; documents are concatenated
in path order (TFDS reorders records on write, so the order is fixed here) into
one token stream, which is cut into windows of seq_len + 1 tokens with stride
seq_len (the remainder is dropped). Window w gives
  inputs  = stream[w*T : w*T + T]
  targets = stream[w*T + 1 : w*T + T + 1]
so each target is the next token of its input, and consecutive windows share
one boundary token.

Training order: the windows are shuffled with a deterministic per-epoch
permutation and repeated forever (grain `MapDataset.shuffle(...).repeat()`).
Global batch k holds windows [k*B, (k+1)*B) of that sequence; process p of P
gets rows [p*B/P, (p+1)*B/P) of it, i.e. `batch(B // P)[p::P]`. The iterator
state is the number of global batches consumed, independent of P.

Shapes: N = tokens in the stream, W = windows, T = seq_len, B = global batch,
P = process count, Bl = B / P (process-local batch).

  it = make_lm_iterator(load_split(info, "train"), seq_len=256,
                        global_batch_size=32, seed=0)
  batch = next(it)            # {'inputs': [Bl, T] int32, 'targets': [Bl, T] int32}
  state = it.get_state()      # JSON-serialisable; it.set_state(state) resumes
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from learned_loss.data import tokenizer

Batch = dict[str, np.ndarray]


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def token_stream(source: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """All documents of a source as one token stream, in path order.

    Args:
        source: random-access records with 'path' and 'text' (str or bytes),
            e.g. from `text_corpus.load_split`, or a list of dicts.

    Returns:
        [N] uint16 array: `[BOS] + bytes + [EOS]` per document, sorted by path
        (ties broken by text, so the order never depends on the source's).
    """
    docs = sorted(
        (_as_bytes(rec["path"]), _as_bytes(rec["text"]))
        for rec in (source[i] for i in range(len(source)))
    )
    stream = np.empty(sum(len(text) + 2 for _, text in docs), np.uint16)  # [N]
    pos = 0
    for _, text in docs:
        stream[pos] = tokenizer.BOS
        stream[pos + 1 : pos + 1 + len(text)] = np.frombuffer(text, np.uint8)
        stream[pos + 1 + len(text)] = tokenizer.EOS
        pos += len(text) + 2
    return stream


class Windows:
    """Random access over the windows of a token stream: the pipeline's data source."""

    def __init__(self, stream: np.ndarray, seq_len: int):
        """Args: stream: [N] token ids; seq_len: T, tokens per example."""
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.stream = stream  # [N]
        self.seq_len = seq_len
        self.num_windows = max(0, (len(stream) - 1) // seq_len)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> Batch:
        if not 0 <= index < self.num_windows:
            raise IndexError(f"window {index} out of range [0, {self.num_windows})")
        start = index * self.seq_len
        window = self.stream[start : start + self.seq_len + 1].astype(np.int32)  # [T + 1]
        return {"inputs": window[:-1], "targets": window[1:]}  # [T], [T]

    def batch(self, start: int, size: int) -> Batch:
        """Windows [start, start + size) stacked: {'inputs', 'targets'}: [size, T] int32."""
        rows = [self[i] for i in range(start, start + size)]
        return {key: np.stack([row[key] for row in rows]) for key in ("inputs", "targets")}


def _windows(source: Sequence[Mapping[str, Any]], seq_len: int, min_windows: int) -> Windows:
    """Windows of a source; raises ValueError if there are fewer than `min_windows`."""
    windows = Windows(token_stream(source), seq_len)
    if windows.num_windows < min_windows:
        raise ValueError(
            f"the data split has {len(windows.stream)} tokens ({len(source)} documents), "
            f"which make {windows.num_windows} windows of seq_len + 1 = {seq_len + 1} "
            f"tokens; at least {min_windows} are needed: use a larger split or a "
            "smaller seq_len / batch size"
        )
    return windows


def _shuffle_seed(seed: int) -> int:
    """A well-mixed 32-bit shuffle seed for a user seed.

    grain seeds epoch e of `shuffle(s)` with s + e, so seeds s and s + 1 would
    see the same permutations one epoch apart; hashing the seed breaks that.
    """
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])


class EncodedSource:
    """Random access to encoded records: `encode(source[i])` on first access, then kept, so
    later epochs cost the data threads nothing. Rows are dicts of numpy arrays."""

    def __init__(self, source: Sequence[Any], encode):
        self._source = source
        self._encode = encode
        self._encoded: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        row = self._encoded.get(index)
        if row is None:
            row = self._encoded[index] = self._encode(self._source[index])
        return row

    def batch(self, start: int, size: int) -> dict[str, np.ndarray]:
        """Rows [start, start + size) stacked: {key: [size, ...]}."""
        rows = [self[i] for i in range(start, start + size)]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _row_length(row: Mapping[str, Any]) -> int:
    """T of one example: the length of its 'inputs', else of its first sequence (by key)."""
    if "inputs" in row:
        return int(np.shape(row["inputs"])[-1])
    return next(int(np.shape(row[k])[-1]) for k in sorted(row) if np.ndim(row[k]) >= 1)


class LMIterator:
    """Process-local LM batches, forever, with a resumable state.

    Attributes:
        num_windows: W, examples per epoch.
        seq_len: T.
        tokens_per_epoch: W * T target tokens per epoch.
        global_batch_size: B.
        local_batch_size: B / P, rows of each yielded batch.
        batches_per_epoch: W / B global batches per epoch (a float).
    """

    def __init__(
        self,
        windows: Sequence[Batch],
        *,
        global_batch_size: int,
        seed: int,
        process_index: int,
        process_count: int,
        prefetch: int,
    ):
        self.num_windows = len(windows)
        self.seq_len = _row_length(windows[0])
        self.tokens_per_epoch = self.num_windows * self.seq_len
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.batches_per_epoch = self.num_windows / global_batch_size
        self.seed = seed
        dataset = (
            grain.MapDataset.source(windows)
            .shuffle(seed=_shuffle_seed(seed))
            .repeat()  # Infinite; epoch e is reshuffled with its own permutation.
            .batch(self.local_batch_size)[process_index::process_count]
        )
        read_options = grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch)
        self._iter = iter(dataset.to_iter_dataset(read_options))

    def __iter__(self) -> LMIterator:
        return self

    def __next__(self) -> Batch:
        return next(self._iter)  # {'inputs': [Bl, T], 'targets': [Bl, T]} int32

    def _identity(self) -> dict[str, int]:
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size,
            "num_windows": self.num_windows,
        }

    def get_state(self) -> dict[str, int]:
        """JSON-serialisable state: 'next_index' = global batches consumed, plus identity.

        The state does not depend on the process index or count, so a run may
        resume on a different number of hosts with the same global batch size.
        """
        return {"next_index": int(self._iter.get_state()["next_index"]), **self._identity()}

    def set_state(self, state: Mapping[str, int]) -> None:
        """Resumes from `get_state()` output: the next batch is the one that would have come.

        Raises:
            ValueError: if the state was saved by a pipeline with a different
                seed, seq_len, global batch size or corpus (window count).
        """
        if state.get("sampler", "epochs") != "epochs":
            raise ValueError(f"data iterator state is of the {state['sampler']!r} sampler but "
                             f"this run reads epochs; resume with the same data.sampler")
        for key, value in self._identity().items():
            if key in state and int(state[key]) != value:
                raise ValueError(
                    f"data iterator state has {key}={state[key]} but this pipeline has "
                    f"{key}={value}; resume with the same data config"
                )
        self._iter.set_state({"next_index": int(state["next_index"])})


def _check_sizes(global_batch_size: int, seed: int, process_index: int,
                 process_count: int) -> None:
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"need 0 <= process_index < process_count, got {process_index}, {process_count}"
        )
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by the process "
            f"count {process_count}; choose a multiple of {process_count}"
        )
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


def make_example_iterator(
    examples: Sequence[Batch],
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
) -> LMIterator:
    """Shuffled, repeated batches of fixed-shape examples (e.g. encoded instruction tasks).

    Same order, sharding and resumable state as `make_lm_iterator`, over any random-access
    sequence of equally shaped {'inputs': [T], 'targets': [T], ...} examples.
    """
    _check_sizes(global_batch_size, seed, process_index, process_count)
    if len(examples) < 1:
        raise ValueError("the example source is empty")
    return LMIterator(examples, global_batch_size=global_batch_size, seed=seed,
                      process_index=process_index, process_count=process_count,
                      prefetch=prefetch)


def make_lm_iterator(
    source: Sequence[Mapping[str, Any]],
    *,
    seq_len: int,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
) -> LMIterator:
    """Shuffled, repeated, packed LM batches for this process.

    Args:
        source: random-access records with 'path' and 'text' (see `token_stream`).
        seq_len: T, tokens per example.
        global_batch_size: B, examples per step summed over all processes.
        seed: shuffle seed (any non-negative int); same seed, same batches.
        process_index: p, this process (jax.process_index()).
        process_count: P, number of processes (jax.process_count()).
        prefetch: batches built ahead in background threads (0: none).

    Returns:
        An `LMIterator` yielding {'inputs', 'targets'}: [B / P, T] int32.

    Raises:
        ValueError: bad sizes or indices, B not divisible by P, or a split with
            fewer than one window.
    """
    _check_sizes(global_batch_size, seed, process_index, process_count)
    windows = _windows(source, seq_len, min_windows=1)
    return LMIterator(
        windows,
        global_batch_size=global_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        prefetch=prefetch,
    )


def make_eval_batches(
    source: Sequence[Mapping[str, Any]], *, seq_len: int, batch_size: int, max_batches: int
) -> list[Batch]:
    """The first windows of a split, in order, as a fixed list of evaluation batches.

    Args:
        source: random-access records with 'path' and 'text'.
        seq_len: T.
        batch_size: rows per batch.
        max_batches: at most this many batches (fewer if the split is small).

    Returns:
        min(max_batches, W // batch_size) batches of {'inputs', 'targets'}: [batch_size, T] int32.

    Raises:
        ValueError: if the split has fewer than `batch_size` windows.
    """
    if batch_size < 1 or max_batches < 1:
        raise ValueError(
            f"batch_size and max_batches must be positive, got {batch_size}, {max_batches}"
        )
    windows = _windows(source, seq_len, min_windows=batch_size)
    num_batches = min(max_batches, windows.num_windows // batch_size)
    return [windows.batch(k * batch_size, batch_size) for k in range(num_batches)]
