"""The wall time by stage (learned_loss/core/timing.py): compiles counted to the stage open,
nested stages counted once; and the persistent compilation cache the entry points turn on
(cli.use_compilation_cache): where it lives, written by one process and read by the next."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from learned_loss.core import cli, timing
from tests import runs


def _row(account, name):
    return next(r for r in account["stages"] if r["stage"] == name)


def test_a_jitted_function_compiles_once_in_its_stage():
    timing.reset()
    x = np.arange(6.0, dtype=np.float32)  # numpy: placing it compiles nothing.
    scale = float(time.time_ns() % 1000) + 0.5  # A program no earlier test compiled.
    f = jax.jit(lambda v: v * scale + 1.0)
    with timing.stage("first call"):
        f(x).block_until_ready()
    with timing.stage("second call"):
        f(x).block_until_ready()
    account = timing.breakdown()
    first, second = _row(account, "first call"), _row(account, "second call")
    assert first["programs"] == 1 and first["entered"] == 1
    assert first["compile_s"] > 0 and first["trace_s"] > 0 and first["backend_s"] > 0
    assert first["wall_s"] >= first["compile_s"]
    assert first["run_s"] == pytest.approx(first["wall_s"] - first["compile_s"], abs=2e-3)
    assert second["programs"] == 0 and second["compile_s"] == 0.0 and second["entered"] == 1
    total = account["total"]
    assert total["programs"] == 1 and total["wall_s"] >= first["wall_s"] + second["wall_s"]


def test_nested_stages_count_each_second_once():
    timing.reset()
    offset = float(time.time_ns() % 1000) + 0.25
    with timing.stage("outer"):
        with timing.stage("inner"):
            jax.jit(lambda v: v - offset)(np.ones(3, np.float32)).block_until_ready()
            time.sleep(0.2)
        time.sleep(0.05)
    with timing.stage("outer"):  # Opened again: adds to its row.
        pass
    timing.skipped("token mle")
    account = timing.breakdown()
    outer, inner = _row(account, "outer"), _row(account, "inner")
    assert inner["programs"] == 1 and outer["programs"] == 0
    assert inner["wall_s"] >= 0.2 and 0.05 <= outer["wall_s"] < 0.2
    assert outer["entered"] == 2 and inner["entered"] == 1
    assert _row(account, "token mle")["skipped"] == 1
    assert _row(account, "token mle")["notes"] == ["done before"]
    assert [r["stage"] for r in account["stages"]] == ["outer", "inner", "token mle"]
    text = timing.table(account)
    assert "skipped 1 of 1" in text and text.splitlines()[0].split()[:2] == ["stage", "wall"]


def test_a_compile_inside_a_trace_is_not_counted_twice():
    timing.reset()
    offset = float(time.time_ns() % 1000) + 0.75

    def f(v):
        with jax.ensure_compile_time_eval():  # Compiles and runs this while f is traced.
            c = jax.jit(lambda y: y * offset)(np.arange(3.0, dtype=np.float32))
        return v + c.sum()

    with timing.stage("nested compile"):
        jax.jit(f)(np.ones(2, np.float32)).block_until_ready()
    row = _row(timing.breakdown(), "nested compile")
    assert row["programs"] >= 2
    assert row["compile_s"] < row["trace_s"] + row["lower_s"] + row["backend_s"]
    assert row["compile_s"] <= row["wall_s"]


def test_covered_seconds_are_the_union_of_the_spans():
    assert timing.covered([]) == 0.0
    assert timing.covered([(5.0, 6.0), (0.0, 2.0), (1.0, 3.0)]) == 4.0  # Any order.
    assert timing.covered([(2.0, 3.0), (0.0, 10.0), (4.0, 5.0)]) == 10.0  # Nested.


def test_where_the_compilation_cache_lives(monkeypatch, tmp_path):
    for name in (cli.XLA_CACHE_ENV, "JAX_COMPILATION_CACHE_DIR", "LEARNED_LOSS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli.compilation_cache_dir() == str(tmp_path / "home/.cache/learned_loss/xla")
    monkeypatch.setenv("LEARNED_LOSS_CACHE", str(tmp_path / "cache"))
    assert cli.compilation_cache_dir() == str(tmp_path / "cache/xla")
    assert cli.compilation_cache_dir(str(tmp_path / "cfg")) == str(tmp_path / "cfg/xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert cli.compilation_cache_dir(str(tmp_path / "cfg")) == str(tmp_path / "jax")
    monkeypatch.setenv(cli.XLA_CACHE_ENV, str(tmp_path / "mine"))
    assert cli.compilation_cache_dir() == str(tmp_path / "mine")
    monkeypatch.setenv(cli.XLA_CACHE_ENV, "off")
    assert cli.compilation_cache_dir() is None


def test_the_suite_keeps_compiled_programs_out_of_the_home_cache():
    """tests/conftest.py gives the suite's processes a temporary cache folder, which the entry
    points keep (JAX_COMPILATION_CACHE_DIR)."""
    folder = cli.compilation_cache_dir()
    assert folder is None or not folder.startswith(os.path.expanduser("~/.cache"))


# An entry point (cli.run) that compiles one small program in a stage and prints its row.
_ENTRY = """
import json
import jax, numpy as np
from learned_loss.core import cli, timing

def main(argv):
    timing.reset()
    with timing.stage("tiny"):
        jax.jit(lambda v: v * 3.0 + 1.0)(np.arange(4.0, dtype=np.float32)).block_until_ready()
    print(json.dumps(timing.breakdown()["stages"][0]))

cli.run(main)
"""


def _entry(**env) -> dict:
    clean = {k: v for k, v in runs.env(1).items() if k not in (
        cli.XLA_CACHE_ENV, "JAX_COMPILATION_CACHE_DIR",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "LEARNED_LOSS_CACHE")}
    done = subprocess.run([sys.executable, "-c", _ENTRY], cwd=runs.ROOT, env=dict(clean, **env),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_entry_points_share_compiled_programs_through_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first = _entry(LEARNED_LOSS_CACHE=str(cache))
    assert (first["programs"], first["cache_hits"], first["cache_writes"]) == (1, 0, 1)
    assert os.listdir(cache / "xla")
    second = _entry(LEARNED_LOSS_CACHE=str(cache))  # A new process: read back, not compiled.
    assert (second["programs"], second["cache_hits"], second["cache_writes"]) == (1, 1, 0)
    # Off wins over jax's own setting.
    off = _entry(**{cli.XLA_CACHE_ENV: "off", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "j")})
    assert (off["programs"], off["cache_hits"], off["cache_writes"]) == (1, 0, 0)
    assert not (tmp_path / "j").exists() or not os.listdir(tmp_path / "j")
