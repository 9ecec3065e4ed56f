"""TensorBoard event files, written and read without TensorFlow or the tensorboard package.

An event file is a sequence of TFRecord frames::

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
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

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
