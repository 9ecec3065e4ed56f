"""Tests for learned_loss.core.files: atomic writes."""

import json
import math
import os
import stat

import pytest

from learned_loss.core import files


def test_write_json_replaces_atomically(tmp_path):
    path = tmp_path / "out" / "eval.json"  # The folder is made.
    files.write_json(path, {"b": 1, "a": [1.5]})
    files.write_json(path, {"b": 2, "a": [2.5]})
    assert path.read_text() == '{\n  "a": [\n    2.5\n  ],\n  "b": 2\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # No temporary left.
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    files.write_json(path, {"a": 1})
    with pytest.raises(ValueError, match="Out of range float"):
        files.write_json(path, {"a": math.nan}, allow_nan=False)
    with pytest.raises(TypeError):
        files.write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_write_atomic_text_and_bytes(tmp_path):
    assert files.write_atomic(tmp_path / "a.md", "é\n") == str(tmp_path / "a.md")
    assert (tmp_path / "a.md").read_bytes() == "é\n".encode()
    files.write_atomic(tmp_path / "a.md", b"\x00\x01")
    assert (tmp_path / "a.md").read_bytes() == b"\x00\x01"
