"""Every error class of a user's mistake subclasses errors.UserError, and an entry point turns
any of them into one `error: ...` line and exit status 2."""

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
import textwrap

import learned_loss
from learned_loss.core import cli, errors
from tools import browser


def _package_exceptions() -> dict[str, type]:
    """Exception classes defined in the package's modules, by qualified name."""
    found = {}
    for module_info in pkgutil.walk_packages(learned_loss.__path__, "learned_loss."):
        module = importlib.import_module(module_info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__):
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_package_error_is_a_user_error():
    found = _package_exceptions()
    # cli.Preempted is not a mistake: a run stopped by SIGTERM, saved and resumable.
    others = {k for k, cls in found.items() if not issubclass(cls, errors.UserError)}
    assert others == {"learned_loss.core.cli.Preempted"}
    # The classes entry points used to list one by one are among them.
    for name in ("learned_loss.core.sharding.ShardingError",
                 "learned_loss.data.text_corpus.CorpusError",
                 "learned_loss.core.checkpoint.CheckpointMismatchError",
                 "learned_loss.data.tasks.base.TaskError", "learned_loss.report.render.ReportError",
                 "learned_loss.objectives.artifact.ArtifactError",
                 "learned_loss.studies.sweep.SweepError", "learned_loss.report.studies.StudyError"):
        assert name in found
    assert cli.UserError is errors.UserError
    assert issubclass(browser.BrowserError, errors.UserError)


def test_cli_run_prints_one_line_and_exits_2():
    script = textwrap.dedent("""
        from learned_loss.core import cli
        from learned_loss.data import text_corpus

        def main(argv):
            raise text_corpus.CorpusError("no corpus in /nowhere;\\n point --config.data.dir "
                                          "at one")

        cli.run(main)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == cli.EXIT_USER_ERROR
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: no corpus in /nowhere; point --config.data.dir at one")
    assert "Traceback" not in proc.stderr
