"""A small compare workdir for report tests: fake cells (4 objectives x seeds on one noise, with
an `mle_clean` arm, what each arm saw and per-prompt scores), a meta-training curve, an
over-optimization record and provenance with the families each arm used by role."""

import json
import os

import numpy as np

OBJECTIVES = {"mle": 0.50, "dpo": 0.55, "learned_preference": 0.60, "mle_clean": 0.70}
EVALUATION_FAMILIES = ["add", "parity"]
FAMILIES_BY_ROLE = {
    "mle": {"finetune": EVALUATION_FAMILIES},
    "mle_clean": {"finetune": EVALUATION_FAMILIES},
    "dpo": {"finetune": EVALUATION_FAMILIES, "pairs": EVALUATION_FAMILIES},
    "learned_preference": {"finetune": EVALUATION_FAMILIES,
                           "pairs": EVALUATION_FAMILIES,
                           "meta_train": ["reverse", "sort_list"]},
}


def _data_seen(objective, seed):
    seen = {"noisy_demonstrations": 0 if objective == "mle_clean" else 100,
            "clean_demonstrations": 100 if objective == "mle_clean" else 0,
            "tokens": 1000}
    if objective in ("dpo", "learned_preference"):
        seen.update(gold_answers_in_pairs=50, labeler_queries=50)
    if objective == "learned_preference":
        seen["meta_training"] = {"seconds": 30.0 + seed, "tokens": 5000, "outer_steps": 10}
    return seen


def _cell(objective, noise, seed, em):
    return {"objective": objective, "noise": noise, "seed": seed,
            "metrics": {"exact_match": em, "graded": em + 0.1, "kl": 0.2 * seed,
                        "length": 3.0},
            "compute": {"seconds": 10.0 + seed, "tokens": 1000},
            "families": {"add": em, "parity": 1.0 - em},
            "curve": [{"step": 0, "exact_match": 0.0}, {"step": 10, "exact_match": em}],
            "data_seen": _data_seen(objective, seed),
            "per_prompt": {"input_id": ["input0", "input1"], "family": ["add", "parity"],
                           "exact_match": [1, 0]}}


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
                               "extra": {"data_hashes": {"tasks": "h1"},
                                         "evaluation_families": EVALUATION_FAMILIES,
                                         "families_by_role": FAMILIES_BY_ROLE}}]}, f)
    return cells
