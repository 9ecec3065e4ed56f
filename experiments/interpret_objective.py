"""Plots what a learned token loss (or preference loss) learned and fits closed forms to it.

  python -m experiments.interpret_objective --config=configs/noisy_demonstrations.py:tiny \
      --workdir=/tmp/why \
      --config.learned.artifacts.default=/tmp/meta/artifact
  python -m experiments.interpret_objective --config=configs/meta_preference.py:tiny \
      --workdir=/tmp/mpref_why --config.interpret.artifact=/tmp/mpref/artifact

Trains a model `interpret.steps` steps with the learned loss on the noisy demonstrations of
(`interpret.family_set`, `interpret.noise`), reads every answer token's features off it, and
writes WORKDIR/token_loss.png (the weight against its main features, clean and corrupted examples
apart), WORKDIR/fits.json (each closed form's parameters, MSE and R^2) and WORKDIR/closed_form
(the chosen fit as an artifact: pass it as --config.learned.closed_forms.default to
experiments/noisy_demonstrations.py with the method learned_closed_form).

With a preference config (configs/meta_preference.py), `preference_run.interpret` runs the
artifact's f_theta in a fresh inner run on the training families and writes
WORKDIR/preference_loss.png (f_theta against DPO's loss over the margins seen), WORKDIR/fits.json
(each closed form of `learned.PREFERENCE_FORMS`, its R^2) and WORKDIR/closed_form (the chosen fit,
a learned_preference_loss artifact: pass it as --config.dpo.learned_path to experiments/rlhf.py).
"""

from __future__ import annotations

import os


import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from learned_loss.core import cli, distributed, files, provenance
from learned_loss.meta import interpret, preference_run
from learned_loss.objectives import artifact
from learned_loss.studies import token_arms

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/noisy_demonstrations.py:VARIANT).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the plots, fits and closed form go.")


def main(argv):
    config = _CONFIG.value
    cli.check_run_flags(argv, config, _WORKDIR.value, "configs/noisy_demonstrations.py:tiny")
    distributed.initialize()
    workdir = _WORKDIR.value
    if "preferences" in config:  # configs/meta_preference.py: a learned preference loss.
        summary = preference_run.interpret(config, workdir)
        for fit in summary["fits"]:
            logging.info("%-20s R^2 %.5f (beyond DPO %.5f)  mse %.4g  %s", fit["form"],
                         fit["r2"], fit["r2_beyond_dpo"], fit["mse"],
                         {k: round(fit["params"][k], 4) for k in fit["free"]})
        logging.info("chosen closed form: %s (R^2 %.5f, beyond DPO %.5f)", summary["chosen"],
                     summary["r2"], summary["r2_beyond_dpo"])
        return
    files.makedirs(workdir)
    ic = config.interpret
    objective, path = token_arms.method_objective(config, "learned_offline", ic.noise)
    features = artifact.load(path).settings["features"]
    data = token_arms.build_data(config, ic.family_set, ic.noise)
    with config.unlocked():
        config.steps = ic.steps
    cell = token_arms.Cell(ic.family_set, ic.noise, "learned_offline", config.model.variant, 0)
    (model, inner), _ = token_arms.train_cell(config, cell, data)
    table = interpret.token_table(model, inner["params"], data.train, features,
                                  reference=inner.get("reference"))
    weights = interpret.network_weights(objective.theta, table, features)
    fits = interpret.fit_closed_forms(table, weights)
    chosen = interpret.choose(fits)
    interpret.save_closed_form(os.path.join(workdir, "closed_form"), chosen, path)
    interpret.plot_token_loss(table, weights, chosen, os.path.join(workdir, "token_loss.png"))
    corrupted = table["corrupted"]
    summary = {"artifact": path, "fits": fits, "chosen": chosen["form"],
               "tokens": int(len(weights)),
               "mean_weight_clean": float(np.mean(weights[~corrupted])),
               "mean_weight_corrupted": float(np.mean(weights[corrupted]))
               if corrupted.any() else None}
    files.write_json(os.path.join(workdir, "fits.json"), summary)
    provenance.write(workdir, provenance.collect(config, extra={"artifact": path}))
    for fit in fits:
        logging.info("%-22s R^2 %.3f  mse %.4g  %s", fit["form"], fit["r2"], fit["mse"],
                     fit["theta"])
    logging.info("mean weight: clean %.3f, corrupted %s; chosen closed form: %s",
                 summary["mean_weight_clean"], summary["mean_weight_corrupted"], chosen["form"])



if __name__ == "__main__":
    cli.run(main)
