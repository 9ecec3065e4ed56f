"""Run metrics: a JSONL log, TensorBoard event files, and a progress/ETA line.

Three small pieces, none of which needs TensorFlow or the tensorboard package:

* TensorBoard scalars. An event file is a sequence of TFRecord frames::

      uint64 length (little-endian) | uint32 masked_crc32c(length)
      bytes  data[length]           | uint32 masked_crc32c(data)

  where ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)``
  and ``data`` is a serialized ``tensorflow.Event`` protobuf, encoded here by
  hand (only the fields we write):

      Event   {double wall_time = 1; int64 step = 2; string file_version = 3;
               Summary summary = 5; SessionLog session_log = 7}
      Summary {repeated Value value = 1}
      Value   {string tag = 1; float simple_value = 2}
      SessionLog {enum status = 1}   # START = 1

  `read_tensorboard_scalars` parses the same format back and checks both CRCs.

* `MetricWriter`: ``workdir/metrics.jsonl`` (one ``{"step": ..., ...}`` object
  per line, keys sorted) plus TensorBoard scalars in ``workdir/tensorboard/``.
  Every write is flushed, so a run killed with SIGKILL keeps every step it
  finished writing. On resume from a checkpoint at step ``s``, `truncate_after`
  (or ``MetricWriter(..., resume_step=s)``) drops the records after ``s`` and a
  torn last line, so the log has no duplicated and no missing steps.

  Non-finite floats are written as the JSON strings ``"nan"``, ``"inf"`` and
  ``"-inf"`` (strict JSON has no NaN literal; ``null`` would lose which one it
  was). `read_metrics` turns them back into floats.

* `Progress`: a one-line ``step/total, %, steps/s, tokens/s, ETA`` logger with
  an injectable clock.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_FILE_VERSION = "brain.Event:2"

# ---------------------------------------------------------------------------
# CRC32C (Castagnoli), reflected polynomial 0x82F63B78, table driven.


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as used by TFRecord framing."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The TFRecord "masked" CRC32C of ``data``."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """Wraps ``data`` in one TFRecord frame (length, CRCs, payload)."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length)) + data
            + struct.pack("<I", masked_crc32c(data)))


# ---------------------------------------------------------------------------
# Protobuf wire format, just enough for scalar Events.


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # Negative int64s are 10-byte two's complement.
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _len_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *,
                 scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None,
                 session_start: bool = False) -> bytes:
    """Serializes one ``tensorflow.Event`` protobuf.

    Args:
      wall_time: seconds since the epoch.
      step: the global step.
      scalars: tag -> value, written as ``Summary.Value.simple_value`` (float32).
      file_version: set only in the first event of a file.
      session_start: adds ``session_log {status: START}``, which tells
        TensorBoard to discard events at steps >= ``step`` from earlier files
        (the restart of a resumed run).

    Returns:
      The wire-format bytes.
    """
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _len_delimited(3, file_version.encode())
    if scalars:
        summary = b""
        for tag, value in scalars.items():
            item = (_len_delimited(1, tag.encode())
                    + _key(2, 5) + struct.pack("<f", value))
            summary += _len_delimited(1, item)
        out += _len_delimited(5, summary)
    if session_start:
        out += _len_delimited(7, _key(1, 0) + _varint(1))
    return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _parse_fields(buf: bytes) -> list[tuple[int, Any]]:
    """Decodes one protobuf message into ``(field_number, raw_value)`` pairs."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
        elif wire_type == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire_type == 2:
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire_type == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if pos > len(buf):
            raise ValueError("truncated protobuf field")
        fields.append((field, value))
    return fields


def _decode_scalars(event: bytes) -> tuple[int, list[tuple[str, float]]]:
    step, scalars = 0, []
    for field, value in _parse_fields(event):
        if field == 2:
            step = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 5:
            for sub_field, item in _parse_fields(value):
                if sub_field != 1:
                    continue
                parts = dict(_parse_fields(item))
                if 2 in parts:  # Only simple_value scalars; skip tensors etc.
                    tag = parts.get(1, b"").decode()
                    scalars.append((tag, struct.unpack("<f", parts[2])[0]))
    return step, scalars


def read_records(path: str | os.PathLike[str]) -> list[bytes]:
    """Reads the payloads of a TFRecord file, checking both CRCs of each frame.

    A torn final frame (a writer killed mid-record) is ignored, as TensorBoard
    does; a CRC mismatch anywhere raises.

    Raises:
      ValueError: if a length or data CRC does not match.
    """
    with open(path, "rb") as f:
        buf = f.read()
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
    if not os.path.isdir(path):
        return [path]
    names = [n for n in os.listdir(path) if n.startswith("events.out.tfevents.")]

    def order(name: str) -> tuple[int, int, str]:
        # events.out.tfevents.{time}.{host}.{pid}.{counter}: by time, counter.
        parts = name.split(".")
        time_, counter = (int(p) if p.isdigit() else -1
                          for p in (parts[3], parts[-1]))
        return time_, counter, name

    return [os.path.join(path, n) for n in sorted(names, key=order)]


def read_tensorboard_scalars(
        path: str | os.PathLike[str]) -> list[tuple[int, str, float]]:
    """Reads the scalars of an event file, or of every event file in a folder.

    Events are returned in file order (files sorted by creation time); no
    purging of restarted steps is applied.

    Returns:
      ``(step, tag, value)`` triples; values are float32 rounded, as stored.
    """
    out = []
    for file in _event_files(os.fspath(path)):
        for record in read_records(file):
            step, scalars = _decode_scalars(record)
            out.extend((step, tag, value) for tag, value in scalars)
    return out


_FILE_COUNTER = itertools.count()


class TensorBoardWriter:
    """Appends scalar events to a new event file in ``logdir``."""

    def __init__(self, logdir: str | os.PathLike[str], *,
                 purge_step: int | None = None):
        """Opens the file and writes the ``file_version`` event.

        Args:
          logdir: folder for the event file (created if needed).
          purge_step: if set, also writes a ``SessionLog.START`` event at this
            step, so TensorBoard hides events at steps >= it from older files.
        """
        os.makedirs(logdir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
                f".{os.getpid()}.{next(_FILE_COUNTER)}")
        self.path = os.path.join(os.fspath(logdir), name)
        self._file = open(self.path, "wb")
        self._write(encode_event(time.time(), 0, file_version=_FILE_VERSION))
        if purge_step is not None:
            self._write(encode_event(time.time(), purge_step, session_start=True))

    def _write(self, event: bytes) -> None:
        self._file.write(frame_record(event))
        self._file.flush()

    def write_scalars(self, step: int, scalars: Mapping[str, float],
                      wall_time: float | None = None) -> None:
        """Writes one event holding all ``scalars`` at ``step`` and flushes."""
        wall_time = time.time() if wall_time is None else wall_time
        self._write(encode_event(wall_time, step, scalars=scalars))

    def close(self) -> None:
        self._file.close()


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
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [_from_json(r) for r in _parse_lines(f.read(), path)]


def truncate_after(workdir: str | os.PathLike[str], step: int) -> int:
    """Keeps only records with ``record["step"] <= step``, atomically.

    Call before writing when resuming from a checkpoint at ``step``. A torn
    last line from a killed run is dropped.

    Returns:
      The number of records kept.
    """
    path = os.path.join(os.fspath(workdir), METRICS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        kept = [r for r in _parse_lines(f.read(), path) if r["step"] <= step]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".metrics.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in kept)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600.
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return len(kept)


def _ends_torn(path: str) -> bool:
    """Whether the file exists, is non-empty and lacks a final newline."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


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
        os.makedirs(workdir, exist_ok=True)
        if resume_step is not None:
            truncate_after(workdir, resume_step)
        elif _ends_torn(os.path.join(workdir, METRICS_FILE)):
            truncate_after(workdir, sys.maxsize)  # Appending would bury it.
        self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a",
                           encoding="utf-8")
        self._tb = TensorBoardWriter(
            os.path.join(workdir, TENSORBOARD_DIR),
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
        self._jsonl.flush()
        self._tb.write_scalars(int(step), dict(sorted(values.items())))

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
