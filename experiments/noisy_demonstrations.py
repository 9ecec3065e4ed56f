"""Compares objectives for fine-tuning from noisy demonstrations
(learned_loss/studies/noisy_demonstrations.py).

  python -m experiments.noisy_demonstrations --config=configs/noisy_demonstrations.py:tiny \
      --workdir=/tmp/noisy \
      --config.learned.artifacts.default=/tmp/meta/artifact

Refuses, before any training, an artifact whose meta-training gave an evaluation family a meta
role. Writes WORKDIR/cells/*.json (one per cell; a re-run skips finished cells), summary.json,
summary.md (generated findings, then the mean and 95% CI over seeds and the paired difference
from MLE with raw and Holm-adjusted p), findings.json, and provenance.json (with every method's
families by role).
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from learned_loss.core import cli, distributed, provenance
from learned_loss.data import tasks
from learned_loss.studies import noisy_demonstrations, token_arms

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/noisy_demonstrations.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the cells and the summary go.")


def main(argv):
    config = _CONFIG.value
    cli.check_run_flags(argv, config, _WORKDIR.value, "configs/noisy_demonstrations.py:tiny")
    distributed.initialize()
    workdir = _WORKDIR.value
    cells = noisy_demonstrations.grid(config)
    for method in {c.method for c in cells}:  # Fail before any training on a bad method.
        for noise in config.noises:
            token_arms.method_objective(config, method, noise)
    roles = token_arms.check_roles(config, cells)
    provenance.write(workdir, provenance.collect(config, extra={
        "cells": len(cells), tasks.roles.RECORD_KEY: roles}))
    results = noisy_demonstrations.run_cells(config, workdir, cells, log=logging.info)
    summary = noisy_demonstrations.write_summary(workdir, results)
    logging.info("summary:\n%s",
                 noisy_demonstrations.markdown(summary["exact_match"], "exact_match"))


if __name__ == "__main__":
    cli.run(main)
