"""Entry-point plumbing shared by `experiments/`: flag parsing and one-line errors.

A user mistake (an unknown config key, a mesh that does not fit the devices, a missing corpus,
a workdir of another model) ends the program with a single `error: ...` line that names the
problem and the fix, and exit status 2; a traceback is kept for real bugs.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
from typing import Callable, Sequence

from absl import app, flags, logging

from learned_loss.core.errors import UserError  # noqa: F401  (re-exported: cli.UserError)

EXIT_USER_ERROR = 2
# A run stopped by SIGTERM (preemption) after saving what it had: a re-run resumes it. sysexits'
# EX_TEMPFAIL, so that a scheduler requeues the job and a sweep does not mark the point done.
EXIT_PREEMPTED = 75
# Libraries whose INFO lines drown the run's own (orbax logs a dozen lines per checkpoint).
QUIET_BELOW_WARNING = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/")
# The persistent compilation cache of entry points: "off", or a folder (default CACHE/xla).
XLA_CACHE_ENV = "LEARNED_LOSS_XLA_CACHE"
XLA_CACHE_OFF = ("off", "0", "false", "no", "none")
# Programs that took at least this long to compile are kept: most of a run's programs are
# small, and on a CPU each takes 0.05-1 s to compile and milliseconds to read back.
XLA_CACHE_MIN_COMPILE_SECONDS = 0.0


def fail(message: str) -> None:
    """Prints one line to stderr and exits with EXIT_USER_ERROR."""
    first = " ".join(str(message).split())
    print(f"error: {first}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def _unknown_key_message(error: Exception, argv: Sequence[str]) -> str | None:
    """Turns ml_collections' "'lrr' Did you mean 'lr'" into a message naming the flag."""
    text = str(error).replace("\\'", "'").replace('\\"', '"').replace("\\n", " ")
    key = re.search(r"'([A-Za-z0-9_]+)'", text)
    if not key:
        return None
    flag = next((a.split("=")[0] for a in argv if re.search(
        rf"^--[\w]+(\.[\w]+)*\.{re.escape(key.group(1))}(\.|=|$)", a)), None)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    where = f" in {flag}" if flag else ""
    fix = f" (did you mean {hint.group(1)!r}?)" if hint else ""
    return (f"unknown config key {key.group(1)!r}{where}{fix}; only fields that the config file "
            f"defines can be overridden")


def check_run_flags(argv: Sequence[str], config, workdir: str | None, example: str) -> None:
    """The checks every training entry point makes before it starts (UserError naming the fix)."""
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; pass settings as --config.FIELD")
    if workdir is None:
        raise UserError("--workdir is required: the folder for checkpoints and metrics")
    if config is None:
        raise UserError(f"--config is required, e.g. --config={example}")


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl flag parsing with one-line errors for bad flags and unknown config keys."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        fail(_unknown_key_message(e, argv) or f"bad flag: {e}")
    except flags.Error as e:
        fail(str(e))
    return []


def _quiet_libraries(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        part in record.pathname for part in QUIET_BELOW_WARNING)


def compilation_cache_dir(configured: str = "") -> str | None:
    """Where entry points keep compiled XLA programs (jax's persistent compilation cache), or
    None for none: $LEARNED_LOSS_XLA_CACHE when set (a folder, or `off`), else jax's own
    setting ($JAX_COMPILATION_CACHE_DIR) when made, else CACHE/xla, CACHE being `configured`
    (a config's cache_dir), $LEARNED_LOSS_CACHE or ~/.cache/learned_loss (as the
    pre-training cache, pretraining.cache_root)."""
    chosen = os.environ.get(XLA_CACHE_ENV, "").strip()
    if chosen.lower() in XLA_CACHE_OFF:
        return None
    if chosen:
        return chosen
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    root = configured or os.environ.get("LEARNED_LOSS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "learned_loss")
    return os.path.join(root, "xla")


def use_compilation_cache(configured: str = "") -> str | None:
    """Turns jax's persistent compilation cache on in `compilation_cache_dir(configured)`
    (off when that is None), so that the processes of a job, of a sweep and re-runs compile a
    program once between them; returns the folder. Call it before the first compile (cli.run
    does, before `main`). A cached executable is the program compiled for the same jax, XLA
    flags and devices (jax keys it by them), so results are those of a fresh compile."""
    import jax  # Here: the flag parsing above needs no jax.

    folder = compilation_cache_dir(configured)
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          XLA_CACHE_MIN_COMPILE_SECONDS)
    return folder


def _configured_cache_dir() -> str:
    """The entry point's `config.cache_dir`, when it has a --config with one ("" otherwise)."""
    config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
    try:
        return str(config.get("cache_dir", "") or "") if config is not None else ""
    except (AttributeError, TypeError):
        return ""


class Preempted(Exception):
    """SIGTERM arrived between the runs of a job (loop.raise_if_stopped): what finished is
    saved and a re-run resumes, so `run` logs it and exits EXIT_PREEMPTED."""


def _stopped_by_sigterm() -> bool:
    """Whether a training loop of this process stopped on SIGTERM (loop.StopSignal). Read
    without importing loop, which imports this module: a process that never loaded it ran
    no loop."""
    loop = sys.modules.get("learned_loss.core.loop")
    return bool(loop is not None and loop.sigterm_received())


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)` where a UserError (every error class of a user's mistake subclasses
    it) prints one line and exits 2, and a run that SIGTERM stopped (a loop saved its checkpoint
    and returned early, or a job raised Preempted between runs) exits EXIT_PREEMPTED. The
    persistent compilation cache is on before `main` runs (`use_compilation_cache`)."""

    def guarded(argv):
        logging.get_absl_handler().addFilter(_quiet_libraries)
        if "tensorflow_datasets" in sys.modules:  # Its progress bars would fill the log.
            sys.modules["tensorflow_datasets"].disable_progress_bar()
        use_compilation_cache(_configured_cache_dir())
        try:
            main(argv)
        except UserError as e:
            fail(str(e))
        except Preempted as e:  # Saved and resumable: not a failure, not finished either.
            logging.warning("%s", e)
            sys.exit(EXIT_PREEMPTED)
        if _stopped_by_sigterm():
            sys.exit(EXIT_PREEMPTED)

    app.run(guarded, flags_parser=parse_flags)
