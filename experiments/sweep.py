"""Runs every point of a config's `get_sweep()`, each in its own workdir
(learned_loss/studies/sweep.py).

  python -m experiments.sweep --config=configs/compare.py:tiny --workdir=ROOT [--parallel=2]
  python -m experiments.sweep --config=configs/pretrain.py:tiny --entry=experiments.pretrain \
      --workdir=ROOT --launcher=print > commands.txt   # one line per point, for a scheduler
  python -m experiments.sweep --config=configs/compare.py:tiny --workdir=ROOT -- --config.steps=50
      # flags after `--` reach every point (not one that the sweep itself sets)

Locally the points run one after another or `--parallel` at a time (on GPUs each with GPUs of
its own; refused above the GPU count, and above 1 on a TPU host); finished points are skipped
on a re-run, and a failed point is recorded in ROOT/sweep.json without stopping the others (the
run then exits 2); a point stopped by SIGTERM is resumed by a re-run (the run exits 75 when one
was and none failed). `python -m experiments.report --workdir=ROOT` aggregates the sweep.
"""

from __future__ import annotations

import sys

from absl import flags, logging

from learned_loss.core import cli
from learned_loss.studies import sweep

_CONFIG = flags.DEFINE_string("config", None, "Config file and variant, FILE:ARG, defining "
                              "get_sweep().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep root: ROOT/points/NAME per point.")
_ENTRY = flags.DEFINE_string("entry", "experiments.compare_objectives",
                             "Module each point runs with python -m.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Points run at once (local launcher).")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "print"],
                              "local: run the points here; print: write their command lines.")


def main(argv):
    if not _CONFIG.value or not _WORKDIR.value:
        raise cli.UserError("--config=FILE:ARG and --workdir=ROOT are required")
    points = sweep.points(_CONFIG.value, _WORKDIR.value, _ENTRY.value, extra_flags=argv[1:])
    if _LAUNCHER.value == "print":
        sys.stdout.write(sweep.print_commands(points))
        return
    records = sweep.run(points, _WORKDIR.value, _PARALLEL.value, log=logging.info)
    failed = sorted(n for n, r in records.items() if r["status"] == "failed")
    if failed:
        for name in failed:
            logging.error("point %s failed (exit %s); log tail:\n%s", name,
                          records[name]["returncode"], records[name].get("log_tail", ""))
        cli.fail(f"{len(failed)} of {len(records)} points failed: {failed}; see "
                 f"{_WORKDIR.value}/sweep.json")
    preempted = sorted(n for n, r in records.items() if r["status"] == "preempted")
    if preempted:
        raise cli.Preempted(f"{len(preempted)} of {len(records)} points stopped by SIGTERM "
                            f"({preempted}); re-run the sweep to resume them")


if __name__ == "__main__":
    cli.run(main)
