"""The estimator and outer-loop sections shared by the meta-training configs
(configs/meta_train.py, configs/meta_preference.py; see learned_loss/meta/run.py and
learned_loss/meta/preference_run.py)."""

from typing import Any, Mapping

import ml_collections


def estimator(v: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The meta-gradient estimator of a variant `v` (its estimator, population, unroll and
    horizon range)."""
    config = ml_collections.ConfigDict()
    config.name = v["estimator"]  # tbptt, es, pes or full_es
    config.population = v["population"]  # particles (tbptt) or antithetic pairs
    config.unroll_length = v["unroll"]  # K inner steps per outer step
    config.min_horizon, config.max_horizon = v["horizon"]
    config.remat = True
    config.sigma = 0.01  # ES / PES perturbation scale
    config.shaping = "rank"  # es: rank, zscore or none
    config.clip = 0.0  # es / pes: clip of loss differences (0: none)
    config.strategy = "open_es"  # full_es: open_es, snes or cma_es
    return config


def outer(v: Mapping[str, Any], lr: float) -> ml_collections.ConfigDict:
    """The outer loop of a variant `v`: clipped Adam at `lr`, its steps, logging, evaluation and
    checkpoints, and the steps of the sanity check every candidate theta must pass (a fresh
    inner run under it must lower the meta-objective)."""
    config = ml_collections.ConfigDict()
    config.lr = lr
    config.grad_clip = 1.0
    config.num_steps = v["steps"]
    config.log_every = v["log"]
    config.eval_every = v["eval"]
    config.checkpoint_every = v["ckpt"]
    config.keep_checkpoints = 2
    config.sanity_steps = v["sanity_steps"]
    return config
