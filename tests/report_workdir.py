"""A small compare workdir for report tests: fake cells (3 objectives x seeds on one noise),
a meta-training curve, an over-optimization record and provenance."""

import json
import os

import numpy as np

OBJECTIVES = {"mle": 0.50, "dpo": 0.55, "learned_token_loss": 0.60}


def _cell(objective, noise, seed, em):
    return {"objective": objective, "noise": noise, "seed": seed,
            "metrics": {"exact_match": em, "graded": em + 0.1, "kl": 0.2 * seed,
                        "length": 3.0},
            "compute": {"seconds": 10.0 + seed, "tokens": 1000},
            "families": {"add": em, "parity": 1.0 - em},
            "curve": [{"step": 0, "exact_match": 0.0}, {"step": 10, "exact_match": em}]}


def write_workdir(path, noise="swap30", seeds=3):
    os.makedirs(path / "cells", exist_ok=True)
    rng = np.random.default_rng(0)
    cells = []
    for objective, base in OBJECTIVES.items():
        for seed in range(seeds):
            cell = _cell(objective, noise, seed, float(base + 0.05 * rng.standard_normal()))
            cells.append(cell)
            with open(path / "cells" / f"{noise}-{objective}-s{seed}.json", "w") as f:
                json.dump(cell, f)
    os.makedirs(path / "meta" / "token_tbptt", exist_ok=True)
    with open(path / "meta" / "token_tbptt" / "metrics.jsonl", "w") as f:
        for step in range(3):
            f.write(json.dumps({"step": step, "meta_loss": 1.0 - 0.1 * step}) + "\n")
    over = {"best_of_n": {"d": [0.0, 0.5, 1.0, 1.5], "gold": [0.5, 0.6, 0.62, 0.6],
                          "proxy": [0.0, 0.4, 0.7, 0.9],
                          "fit_gold": {"alpha": 0.4, "beta": 0.2, "r2": 0.9},
                          "fit_proxy": {"alpha": 0.8, "beta": 0.1, "r2": 0.95}}, "rl": {}}
    with open(path / "overoptimization.json", "w") as f:
        json.dump(over, f)
    with open(path / "provenance.json", "w") as f:
        json.dump({"starts": [{"git_commit": "abc123", "git_dirty": False,
                               "config": {"seeds": seeds}, "versions": {"jax": "0.4"},
                               "mesh": {"data": 8}, "devices": {"kind": "cpu"},
                               "extra": {"data_hashes": {"tasks": "h1"}}}]}, f)
    return cells
