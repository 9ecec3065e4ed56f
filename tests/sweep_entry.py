"""A stand-in entry point for sweep tests: writes one compare cell per objective into
--workdir from its --config.lr and --config.seeds overrides; --config.lr=fail exits 3, and
--config.lr=preempt stops on SIGTERM through the entry points' own path (cli.run, loop). The
workdir may be in a bucket (written through etils.epath, as the package's files are)."""

import json
import os
import signal
import sys

from etils import epath


def preempted() -> None:
    """Receives SIGTERM between runs, as a preempted job does: cli.run exits EXIT_PREEMPTED."""
    from learned_loss.core import cli, loop  # pylint: disable=import-outside-toplevel
    loop.StopSignal()
    os.kill(os.getpid(), signal.SIGTERM)
    sys.argv = sys.argv[:1]  # This stand-in defines no absl flags.
    cli.run(lambda argv: loop.raise_if_stopped("the next run"))


def main(argv):
    args = dict(a[2:].split("=", 1) for a in argv if a.startswith("--"))
    if args.get("config.lr") == "preempt":
        preempted()
    if args.get("config.lr") == "fail":
        print("lr must be a number", file=sys.stderr)
        sys.exit(3)
    lr = float(args["config.lr"])
    workdir = epath.Path(args["workdir"])
    if not args["workdir"].startswith("gs://"):
        (workdir / "cells").mkdir(parents=True, exist_ok=True)
    # The GPUs the sweep gave it.
    (workdir / "gpus.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
    for objective, offset in (("mle", 0.0), ("learned_token_loss", 0.1)):
        for seed in range(int(args.get("config.seeds", "2"))):
            cell = {"objective": objective, "noise": "swap30", "seed": seed,
                    "metrics": {"exact_match": lr / 10 + offset + 0.01 * seed}}
            (workdir / "cells" / f"{objective}-{seed}.json").write_text(json.dumps(cell))


if __name__ == "__main__":
    main(sys.argv[1:])
