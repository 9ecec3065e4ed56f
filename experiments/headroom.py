"""The headroom map: MLE against MLE on clean answers, one axis at a time
(learned_loss/studies/headroom.py).

  python -m experiments.headroom --config=configs/headroom.py:tiny --workdir=/tmp/headroom

Writes WORKDIR/points/NAME (each point's cells, summary and provenance; a re-run skips finished
cells), WORKDIR/headroom.json, provenance.json and the report (WORKDIR/report.md, .html) with
the headroom against each axis and the regime chosen.
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from learned_loss.core import cli, distributed, provenance
from learned_loss.report import render as report
from learned_loss.data import tasks
from learned_loss.studies import headroom, noisy_demonstrations, token_arms

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/headroom.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the points, headroom.json and the report go.")


def main(argv):
    config = _CONFIG.value
    cli.check_run_flags(argv, config, _WORKDIR.value, "configs/headroom.py:tiny")
    distributed.initialize()
    headroom.check(config)
    base = headroom.point_config(config, {})
    roles = token_arms.check_roles(base, noisy_demonstrations.grid(base))
    provenance.write(_WORKDIR.value, provenance.collect(config, extra={
        "points": [p["name"] for p in headroom.points(config)], tasks.roles.RECORD_KEY: roles}))
    study = headroom.run(config, _WORKDIR.value, log=logging.info)
    logging.info("regime chosen: %s", study["choice"] or "none within max_cell_seconds")
    paths = report.write(_WORKDIR.value)
    logging.info("wrote %s and %s", paths["markdown"], paths["html"])


if __name__ == "__main__":
    cli.run(main)
