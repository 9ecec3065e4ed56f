"""Run metrics: a JSONL log, TensorBoard event files, and a progress/ETA line.

* `MetricWriter`: ``workdir/metrics.jsonl`` (one ``{"step": ..., ...}`` object
  per line, keys sorted) plus TensorBoard scalars in ``workdir/tensorboard/``,
  written with tensorboardX's event-file writer (its protobufs, TFRecord framing
  and CRC32C; no TensorFlow). Every write is flushed, so a run killed with
  SIGKILL keeps every step it finished writing. On resume from a checkpoint at
  step ``s``, `truncate_after` (or ``MetricWriter(..., resume_step=s)``) drops
  the records after ``s`` and a torn last line, so the log has no duplicated and
  no missing steps; the new event file starts with a ``SessionLog.START`` event
  at ``s + 1``, which tells TensorBoard to hide the older files' later steps.

  Non-finite floats are written as the JSON strings ``"nan"``, ``"inf"`` and
  ``"-inf"`` (strict JSON has no NaN literal; ``null`` would lose which one it
  was). `read_metrics` turns them back into floats.

  In a bucket (a ``gs://`` workdir) an object cannot be appended to: the writer keeps the log
  and rewrites both objects whole (an upload is atomic) at most every `REMOTE_FLUSH_SECONDS`,
  at `flush` (the training loop calls it before each checkpoint, so the log holds every step a
  checkpoint holds) and at `close`.

* `read_tensorboard_scalars`: the scalars of an event file (or a folder of
  them) back, each frame's CRCs checked.

* `Progress`: a one-line ``step/total, %, steps/s, tokens/s, ETA`` logger with
  an injectable clock.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from absl import logging
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.record_writer import masked_crc32c

from learned_loss.core import files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Seconds between uploads of a bucket workdir's metrics: GCS takes about one update of an
# object per second, and each upload rewrites the whole log.
REMOTE_FLUSH_SECONDS = 10.0

# ---------------------------------------------------------------------------
# JSONL metrics.


def _to_json_float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _from_json(record: dict[str, Any]) -> dict[str, Any]:
    special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
    return {k: special.get(v, v) if isinstance(v, str) else v
            for k, v in record.items()}


def _to_float(name: str, value: Any) -> float:
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"metric {name!r} is not a scalar: shape {array.shape}")
    return float(array.reshape(()))


def _parse_lines(text: str, path: str) -> list[dict[str, Any]]:
    """Parses JSONL; a torn last line (no trailing newline) is dropped."""
    lines = text.split("\n")
    last = lines.pop()  # "" when the file ends with a newline.
    records = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: bad metrics line") from e
    if last.strip():
        try:
            records.append(json.loads(last))
        except json.JSONDecodeError:
            logging.warning("%s: dropping a partial last line", path)
    return records


def read_metrics(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Reads ``workdir/metrics.jsonl``; ``"nan"``/``"inf"`` become floats."""
    path = os.path.join(os.fspath(workdir), METRICS_FILE)
    if not files.exists(path):
        return []
    return [_from_json(r) for r in _parse_lines(files.read_text(path), path)]


def truncate_after(workdir: str | os.PathLike[str], step: int) -> int:
    """Keeps only records with ``record["step"] <= step``, atomically.

    Call before writing when resuming from a checkpoint at ``step``. A torn
    last line from a killed run is dropped.

    Returns:
      The number of records kept.
    """
    path = os.path.join(os.fspath(workdir), METRICS_FILE)
    if not files.exists(path):
        return 0
    kept = [r for r in _parse_lines(files.read_text(path), path) if r["step"] <= step]
    files.write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return len(kept)


def _ends_torn(path: str) -> bool:
    """Whether the file exists, is non-empty and lacks a final newline."""
    if files.is_remote(path):
        data = files.read_bytes(path) if files.exists(path) else b""
        return bool(data) and not data.endswith(b"\n")
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------
# TensorBoard event files.

_FILE_COUNTER = itertools.count()


def _open_events(logdir: str, *, purge_step: int | None) -> EventsWriter:
    """A new event file ``events.out.tfevents.{time}.{host}.{pid}.{n}`` in ``logdir``.

    tensorboardX writes the ``file_version`` event first; with ``purge_step`` a
    ``SessionLog.START`` event at that step follows (TensorBoard then discards
    events at steps >= it from older files: the restart of a resumed run).
    """
    if not files.is_remote(logdir):  # tensorboardX uploads gs:// objects itself.
        os.makedirs(logdir, exist_ok=True)
    writer = EventsWriter(os.path.join(logdir, "events"),
                          filename_suffix=f".{os.getpid()}.{next(_FILE_COUNTER)}")
    if purge_step is not None:
        writer.write_event(Event(wall_time=time.time(), step=purge_step,
                                 session_log=SessionLog(status=SessionLog.START)))
    writer.flush()
    return writer


def read_records(path: str | os.PathLike[str]) -> list[bytes]:
    """The payloads of a TFRecord file, both CRCs of each frame checked.

    A frame is ``uint64 length | uint32 masked_crc32c(length) | data |
    uint32 masked_crc32c(data)``, little-endian. A torn final frame (a writer
    killed mid-record) is ignored, as TensorBoard does.

    Raises:
      ValueError: if a length or data CRC does not match.
    """
    buf = files.read_bytes(path)
    records, pos = [], 0
    while pos + 12 <= len(buf):
        header = buf[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", buf[pos + 8:pos + 12])
        if masked_crc32c(header) != length_crc:
            raise ValueError(f"{path}: length CRC mismatch at offset {pos}")
        end = pos + 12 + length
        if end + 4 > len(buf):
            break
        data = buf[pos + 12:end]
        (data_crc,) = struct.unpack("<I", buf[end:end + 4])
        if masked_crc32c(data) != data_crc:
            raise ValueError(f"{path}: data CRC mismatch at offset {pos}")
        records.append(data)
        pos = end + 4
    return records


def _event_files(path: str) -> list[str]:
    if not files.isdir(path):
        return [path]
    names = [n for n in files.listdir(path) if n.startswith("events.out.tfevents.")]

    def order(name: str) -> tuple[int, int, str]:
        # events.out.tfevents.{time}.{host}.{pid}.{counter}: by time, counter.
        parts = name.split(".")
        time_, counter = (int(p) if p.isdigit() else -1 for p in (parts[3], parts[-1]))
        return time_, counter, name

    return [os.path.join(path, n) for n in sorted(names, key=order)]


def read_events(path: str | os.PathLike[str]) -> list[Event]:
    """The events of an event file, or of every event file in a folder (oldest first)."""
    return [Event.FromString(record) for file in _event_files(os.fspath(path))
            for record in read_records(file)]


def read_tensorboard_scalars(path: str | os.PathLike[str]) -> list[tuple[int, str, float]]:
    """``(step, tag, value)`` of every scalar in `read_events` order, values float32 as
    stored; steps restarted by a resume are not purged."""
    return [(e.step, v.tag, v.simple_value) for e in read_events(path)
            for v in e.summary.value if v.HasField("simple_value")]


class _ObjectLog:
    """A text log in a bucket, where an object cannot be appended to: the whole text is kept
    and uploaded (one atomic object write) at `flush` and `close`."""

    def __init__(self, path: str):
        self.path = path
        self._parts = [files.read_text(path)] if files.exists(path) else []
        self._pending = False

    def write(self, text: str) -> None:
        self._parts.append(text)
        self._pending = True

    def flush(self) -> None:
        if self._pending:
            files.write_atomic(self.path, "".join(self._parts))
            self._pending = False

    def close(self) -> None:
        self.flush()


class MetricWriter:
    """Writes scalars to ``metrics.jsonl`` and TensorBoard, flushing each step.

    Usage::

        with MetricWriter(workdir, enabled=jax.process_index() == 0,
                          resume_step=restored_step) as writer:
            writer.write(step, {"loss": loss, "lr": lr})
    """

    def __init__(self, workdir: str | os.PathLike[str], *, enabled: bool = True,
                 resume_step: int | None = None):
        """Opens the outputs.

        Args:
          workdir: the run's folder.
          enabled: ``False`` makes every method a no-op and creates no files
            (non-zero processes of a multi-host run).
          resume_step: the checkpoint step being resumed from, if any: the JSONL
            is truncated after it and TensorBoard is told to drop later steps.
        """
        self.enabled = enabled
        self._jsonl = self._tb = None
        if not enabled:
            return
        workdir = os.fspath(workdir)
        self._remote = files.is_remote(workdir)
        self._flushed = -math.inf
        files.makedirs(workdir)
        if resume_step is not None:
            truncate_after(workdir, resume_step)
        elif _ends_torn(os.path.join(workdir, METRICS_FILE)):
            truncate_after(workdir, sys.maxsize)  # Appending would bury it.
        path = os.path.join(workdir, METRICS_FILE)
        self._jsonl = _ObjectLog(path) if self._remote else open(path, "a", encoding="utf-8")
        self._tb = _open_events(os.path.join(workdir, TENSORBOARD_DIR),
                                purge_step=None if resume_step is None else resume_step + 1)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Writes ``scalars`` (floats or 0-d numpy/jax arrays) at ``step``."""
        if not self.enabled:
            return
        if "step" in scalars:
            raise ValueError("'step' is reserved for the step number")
        values = {name: _to_float(name, v) for name, v in scalars.items()}
        record = {"step": int(step)}
        record.update({k: _to_json_float(v) for k, v in values.items()})
        self._jsonl.write(json.dumps(record, sort_keys=True) + "\n")
        summary = Summary(value=[Summary.Value(tag=k, simple_value=v)
                                 for k, v in sorted(values.items())])
        self._tb.write_event(Event(wall_time=time.time(), step=int(step), summary=summary))
        if not self._remote or time.monotonic() - self._flushed >= REMOTE_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Writes out every record so far (in a bucket: uploads both logs whole)."""
        if self._jsonl is not None:
            self._jsonl.flush()
            self._tb.flush()
            self._flushed = time.monotonic()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._tb.close()
            self._jsonl = self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Progress and ETA.


def format_duration(seconds: float) -> str:
    """Formats seconds as ``1h02m03s``, ``2m03s`` or ``45s`` (``?`` if unknown)."""
    if not math.isfinite(seconds):
        return "?"
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.1f}"


class Progress:
    """Logs ``step/total``, percent, steps/s, tokens/s and an ETA.

    Rates are averages over the wall time since the first `update` with
    ``step > start_step``: the steps up to it include compilation, so they are
    left out. The ETA is ``(total_steps - step) / steps_per_sec`` and unknown
    (``?``) until the second such update.
    """

    def __init__(self, total_steps: int, *, start_step: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 log: bool = True):
        """Sets up the logger.

        Args:
          total_steps: the step at which training ends.
          start_step: the step training starts (or resumes) from; updates at
            steps <= it are shown but do not start the timing.
          clock: a monotonic time source in seconds (injectable for tests).
          log: whether `update` also logs the line with absl.logging.info.
        """
        self.total_steps = total_steps
        self.start_step = start_step
        self._clock = clock
        self._log = log
        self._ref: tuple[float, int, float | None] | None = None
        self.steps_per_sec: float | None = None
        self.tokens_per_sec: float | None = None
        self.eta_seconds: float | None = None

    def update(self, step: int, *, tokens_seen: float | None = None) -> str:
        """Records that ``step`` is done and returns the progress line.

        Args:
          step: the number of the step just finished.
          tokens_seen: cumulative tokens processed so far (optional).
        """
        now = self._clock()
        if self._ref is None:
            if step > self.start_step:
                self._ref = (now, step, tokens_seen)
        else:
            t0, step0, tokens0 = self._ref
            elapsed = now - t0
            if elapsed > 0 and step > step0:
                self.steps_per_sec = (step - step0) / elapsed
                self.eta_seconds = (
                    max(0, self.total_steps - step) / self.steps_per_sec)
                if tokens_seen is not None and tokens0 is not None:
                    self.tokens_per_sec = (tokens_seen - tokens0) / elapsed
        percent = 100.0 * step / self.total_steps if self.total_steps else 100.0
        parts = [f"step {step}/{self.total_steps} ({percent:.1f}%)"]
        if self.steps_per_sec is not None:
            parts.append(f"{self.steps_per_sec:.2f} steps/s")
        if self.tokens_per_sec is not None:
            parts.append(f"{_si(self.tokens_per_sec)} tokens/s")
        eta = math.inf if self.eta_seconds is None else self.eta_seconds
        parts.append(f"ETA {format_duration(eta)}")
        line = " | ".join(parts)
        if self._log:
            logging.info("%s", line)
        return line
