"""Records what a short comparison and a short fine-tuning run compute, and checks a later tree
against the record: a refactor that should not change numbers keeps them bitwise.

  python -m tools.results_kept --record=tools/results_kept.json     # before the change
  python -m tools.results_kept --check=tools/results_kept.json      # after: lists what moved

It runs `configs/compare.py:smoke` with every arm (`arms.ARMS`) and `configs/finetune.py:smoke`
in fresh folders (data built under the folder too), and keeps, per comparison cell, its metrics,
learning curve, per-family and per-prompt scores, data seen and facts; per fine-tuning step,
every logged metric. Left out: wall times and rates, settings hashes and paths (they name
where and when, not what was computed). Floats are compared exactly; the record holds one CPU's
rounding, so check on the machine kind that recorded it.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Fields that say where or when, not what was computed.
VOLATILE = {"config_hash", "artifact", "theta_source", "data_hash", "sft_from"}
VOLATILE_PREFIXES = ("perf/",)
VOLATILE_SUFFIXES = ("seconds", "_dir")


def _clean(value):
    """`value` without volatile fields; NaN as the string 'nan' (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in sorted(value.items())
                if k not in VOLATILE and not k.startswith(VOLATILE_PREFIXES)
                and not k.endswith(VOLATILE_SUFFIXES)}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _run(args: list[str], folder: str) -> None:
    env = dict(os.environ, TFDS_DATA_DIR=os.path.join(folder, "tfds"),
               LEARNED_LOSS_CACHE=os.path.join(folder, "cache"))
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"results_kept: {' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")


def collect(folder: str) -> dict:
    """Runs both jobs under `folder`; returns {'compare': {cell: ...}, 'finetune': [...]}."""
    from learned_loss.studies import arms  # Imported here: --help stays fast.
    compare = os.path.join(folder, "compare")
    _run(["experiments.compare_objectives", "--config=configs/compare.py:smoke",
          f"--workdir={compare}", f"--config.objectives={tuple(arms.ARMS)!r}"], folder)
    cells = {}
    for path in sorted(glob.glob(os.path.join(compare, "cells", "*.json"))):
        with open(path) as f:
            cells[os.path.basename(path)[:-len(".json")]] = _clean(json.load(f))
    finetune = os.path.join(folder, "finetune")
    _run(["experiments.finetune", "--config=configs/finetune.py:smoke",
          f"--workdir={finetune}"], folder)
    with open(os.path.join(finetune, "metrics.jsonl")) as f:
        steps = [_clean(json.loads(line)) for line in f if line.strip()]
    return {"compare": cells, "finetune": steps}


def differences(old, new, where: str = "") -> list[str]:
    """Paths at which two records differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = [f"{where}/{k}: only in the record" for k in old.keys() - new.keys()]
        out += [f"{where}/{k}: new" for k in new.keys() - old.keys()]
        for k in sorted(old.keys() & new.keys()):
            out += differences(old[k], new[k], f"{where}/{k}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new))
                for d in differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--record", help="write the record to this file")
    group.add_argument("--check", help="compare with the record in this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = collect(folder)
    if args.record:
        with open(args.record, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"recorded {len(result['compare'])} cells and {len(result['finetune'])} "
              f"fine-tuning steps in {args.record}")
        return
    with open(args.check) as f:
        found = differences(json.load(f), result)
    print("\n".join(found) or "bitwise identical: every cell and every fine-tuning step")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
