"""Tests for learned_loss.core.provenance: fields, git state, mesh, JSON, resume."""

import configparser
import json
import math
import os
import re
import shutil
import subprocess

import jax
import ml_collections
import numpy as np
import pytest

from learned_loss.core import provenance

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="no git")


def _config():
    config = ml_collections.ConfigDict()
    config.lr = 3e-4
    config.model = ml_collections.ConfigDict({"d_model": 64, "mesh": (1, 8)})
    return config


def _git(repo, *args):
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
           "PATH": "/usr/bin:/bin:/usr/local/bin"}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "code.py").write_text("x = 1\n")
    _git(repo, "add", "code.py")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


def test_fields_present_and_json_round_trip(repo):
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    record = provenance.collect(_config(), corpus_hash="abc123", mesh=mesh,
                                extra={"seed": np.int64(7)}, repo_dir=repo)
    assert set(record) == {
        "git_commit", "git_dirty", "config", "versions", "python", "platform",
        "hostname", "corpus_hash", "mesh", "devices", "timestamp", "argv",
        "extra"}
    assert record["config"] == {"lr": 3e-4, "model": {"d_model": 64,
                                                      "mesh": [1, 8]}}
    assert record["corpus_hash"] == "abc123"
    assert record["extra"] == {"seed": 7}
    assert record["versions"]["jax"] == jax.__version__
    assert set(record["versions"]) == set(provenance.PACKAGES)
    assert None not in record["versions"].values()
    assert record["timestamp"].endswith("+00:00")
    assert isinstance(record["argv"], list)
    devices = record["devices"]
    assert devices["count"] == jax.device_count()
    assert devices["local_count"] == jax.local_device_count()
    assert devices["platform"] == jax.devices()[0].platform
    assert (devices["process_index"], devices["process_count"]) == (0, 1)
    assert json.loads(json.dumps(record, allow_nan=False)) == record


def test_packages_are_every_install_requirement():
    # Read independently of the package: setup.cfg's install_requires, plus jaxlib.
    parser = configparser.ConfigParser()
    parser.read(os.path.join(os.path.dirname(os.path.dirname(__file__)), "setup.cfg"))
    declared = [re.match(r"[A-Za-z0-9_.-]+", line.strip()).group(0)
                for line in parser["options"]["install_requires"].splitlines() if line.strip()]
    assert sorted(provenance.PACKAGES) == sorted(declared + ["jaxlib"])
    assert {"evosax", "scipy", "matplotlib", "tensorboardX"} <= set(provenance.PACKAGES)


@pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 devices")
def test_mesh_over_eight_cpu_devices():
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(8), ("data",))
    record = provenance.collect({}, mesh=mesh)
    assert record["mesh"] == {"axis_names": ["data"], "shape": {"data": 8}}
    mesh2 = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4),
                              ("data", "model"))
    assert provenance.describe_mesh(mesh2) == {
        "axis_names": ["data", "model"], "shape": {"data": 2, "model": 4}}
    assert provenance.collect({})["mesh"] is None


def test_plain_dict_config_is_accepted():
    record = provenance.collect({"a": (1, 2), "b": np.float32(0.5)})
    assert record["config"] == {"a": [1, 2], "b": 0.5}


@needs_git
def test_dirty_flag_tracks_modified_tracked_file(repo):
    commit, dirty = provenance.git_state(repo)
    assert commit == _git(repo, "rev-parse", "HEAD") and len(commit) == 40
    assert dirty is False
    (repo / "notes.txt").write_text("untracked\n")
    assert provenance.git_state(repo) == (commit, False)
    (repo / "code.py").write_text("x = 2\n")
    assert provenance.git_state(repo) == (commit, True)
    record = provenance.collect({}, repo_dir=repo)
    assert (record["git_commit"], record["git_dirty"]) == (commit, True)


def test_not_a_repo_or_no_git_gives_none(tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert provenance.git_state(plain) == (None, None)
    monkeypatch.setenv("PATH", str(plain))  # No git executable on PATH.
    assert provenance.git_state(tmp_path) == (None, None)
    record = provenance.collect({}, repo_dir=plain)
    assert record["git_commit"] is None and record["git_dirty"] is None


def test_to_jsonable_converts_awkward_values():
    value = {1: (np.int32(3), {np.float64(1.5)}), "arr": np.arange(3),
             "jax": jax.numpy.ones(2), "nan": math.nan, "inf": -math.inf,
             "obj": object}
    out = provenance.to_jsonable(value)
    assert out == {"1": [3, [1.5]], "arr": [0, 1, 2], "jax": [1.0, 1.0],
                   "nan": "nan", "inf": "-inf", "obj": "<class 'object'>"}
    json.dumps(out, allow_nan=False)


def test_write_is_pretty_and_resume_appends(tmp_path):
    first = provenance.collect(_config(), corpus_hash="h1")
    path = provenance.write(tmp_path, first)
    assert path == str(tmp_path / "provenance.json")
    text = (tmp_path / "provenance.json").read_text()
    assert text.startswith('{\n  "starts": [\n')
    assert json.loads(text) == {"starts": [first]}
    second = provenance.collect(_config(), corpus_hash="h2",
                                extra={"resumed_from_step": 100})
    provenance.write(tmp_path, second)
    starts = provenance.read(tmp_path)
    assert [s["corpus_hash"] for s in starts] == ["h1", "h2"]
    assert starts[1]["extra"] == {"resumed_from_step": 100}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["provenance.json"]


def test_read_accepts_a_bare_record(tmp_path):
    (tmp_path / "provenance.json").write_text('{"git_commit": null}')
    assert provenance.read(tmp_path) == [{"git_commit": None}]
    provenance.write(tmp_path, {"git_commit": "abc", "n": (1, 2)})
    assert provenance.read(tmp_path) == [{"git_commit": None},
                                         {"git_commit": "abc", "n": [1, 2]}]
    assert provenance.read(tmp_path / "missing") == []
