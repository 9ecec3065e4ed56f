"""Shared test set-up: libtpu kept offline (`learned_loss.core.tpu_env`), 8 simulated CPU devices,
unless the caller already chose a count, and one persistent compilation cache for the run.

Most of the suite's time is entry-point processes compiling the same small programs again; with
a shared cache (a fresh folder per `pytest` run, removed at its end) each program is compiled
once. A cached executable is the same program, so results stay bitwise identical.
"""

import os
import shutil
import tempfile

from learned_loss.core import tpu_env

# Before anything imports jax: with libtpu installed (the `test` extra), jax would otherwise let
# it query a cloud metadata server. Child processes inherit these (tests/runs.py keeps them).
tpu_env.apply()

from tests import runs  # noqa: E402

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Unless the caller chose an optimisation level (`XLA_FLAGS=--xla_backend_optimization_level=3`,
# XLA's default, runs the suite as users run), XLA's CPU backend compiles for compile time:
# most of the suite's time is compiling small programs that then run a few steps.
# `runs.FAST_COMPILE`, LLVM level 0 (no LLVM passes) and the older fusion emitters, halves it
# (measured: tests/test_model.py 45 s -> 24 s at level 0; the smoke comparison with every arm
# 319 s -> 208 s; test_rlhf, test_meta_estimators and test_learned_preference 109 s -> 76 s
# with the older emitters on top). Entry points that train for a minute or more
# (`runs.run(..., long_run=True)`) get `runs.FAST_RUN`, level 1 with the current emitters,
# whose programs run as fast as at 3 and 1.7x faster than at 0 (configs/finetune.py:easy, 300
# steps: 7.7, 7.0 and 4.3 steps/s at levels 1, 3 and 0). The numbers move only in the last bits
# (about 1e-7 relative in `tools/results_kept` at level 0), as they do on another CPU, which
# every threshold in the suite keeps a margin for; determinism and bitwise resume hold under
# any one set of flags.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + " ".join(runs.FAST_COMPILE)
    os.environ.setdefault(runs.CHOSEN, "1")

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    # Only the main process makes the folder; xdist workers and child processes inherit it.
    if _CACHE_ENV in os.environ or hasattr(config, "workerinput"):
        return
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="learned_loss_jax_cache_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    config._learned_loss_cache = os.environ[_CACHE_ENV]


def pytest_unconfigure(config):
    folder = getattr(config, "_learned_loss_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


# The longest files first (measured: a minute or more each, longest first), so that the two test
# workers finish together instead of one waiting on the other's last long file. `make test`
# passes `--no-loadscope-reorder`: without it, xdist hands out files by their number of tests,
# and single long tests (test_sft_easy.py, test_multihost.py) came last.
LONGEST_FIRST = ("test_rlhf_run.py", "test_compare.py", "test_meta_train.py",
                 "test_scaling_study.py", "test_multihost.py", "test_meta_reward_run.py",
                 "test_meta_preference.py", "test_sft_easy.py", "test_pretrain.py", "test_rlhf.py",
                 "test_finetune.py", "test_one_engine.py", "test_learned_reward.py",
                 "test_splits.py", "test_learned_preference.py", "test_emergence_study.py",
                 "test_noisy_comparison.py", "test_model.py")


def pytest_collection_modifyitems(config, items):
    del config
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
