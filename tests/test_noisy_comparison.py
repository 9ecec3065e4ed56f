"""The noisy-demonstration comparison: cells, resume, and a summary that matches the cells."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from configs import noisy
from learned_loss.meta import comparison
from learned_loss.objectives import artifact, learned


def test_mean_ci_and_paired_summary():
    ci = comparison.mean_ci([0.5, 0.7, 0.6])
    assert ci["mean"] == pytest.approx(0.6)
    # t_{0.975, 2} = 4.303; std 0.1; n 3.
    assert ci["ci95"] == pytest.approx(4.3027 * 0.1 / np.sqrt(3), rel=1e-3)
    assert comparison.mean_ci([0.4])["ci95"] == 0.0
    rows = [dict(family_set="train", noise="swap30", model="nano", method=m, seed=s,
                 exact_match=v)
            for m, values in (("mle", (0.5, 0.6)), ("loss_truncation", (0.6, 0.8)))
            for s, v in enumerate(values)]
    summary = {r["method"]: r for r in comparison.summarize(rows)}
    assert summary["loss_truncation"]["vs_mle"] == pytest.approx(0.15)
    assert summary["loss_truncation"]["vs_mle_ci95"] == pytest.approx(
        12.706 * np.std([0.1, 0.2], ddof=1) / np.sqrt(2), rel=1e-3)
    assert "vs_mle" not in summary["mle"]
    assert "| train | swap30 | nano | loss_truncation | 0.700 ± " in comparison.markdown(
        comparison.summarize(rows), "exact_match")


def test_cells_run_resume_and_summarize(tmp_path):
    art = str(tmp_path / "artifact")
    features = ("log_prob", "answer_log_prob")
    theta = dict(learned.init_token_loss(jax.random.key(0), features, hidden=4),
                 b1=np.float32(-1.0))
    artifact.save(art, "learned_token_loss", theta, {"features": list(features), "hidden": 4},
                  {})
    config = noisy.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    config.methods = ("mle", "learned_offline")
    config.learned.artifacts = {"default": art}
    workdir = str(tmp_path / "w")
    cells = comparison.grid(config)
    assert [c.key for c in cells] == ["train-swap30-mle-nano-s0",
                                      "train-swap30-learned_offline-nano-s0",
                                      "train-swap30-mle-nano-s1",
                                      "train-swap30-learned_offline-nano-s1"]
    results = comparison.run_cells(config, workdir, cells[:2], log=lambda _: None)
    assert results[1]["theta_source"] == art
    assert all(0.0 <= r["exact_match"] <= 1.0 and np.isfinite(r["test_nll"]) for r in results)
    assert results[0]["corrupted_rows"] > 0
    # A re-run reads finished cells instead of training them again.
    stamp = os.path.getmtime(os.path.join(workdir, "cells", cells[0].key + ".json"))
    results = comparison.run_cells(config, workdir, cells, log=lambda _: None)
    assert os.path.getmtime(os.path.join(workdir, "cells", cells[0].key + ".json")) == stamp
    summary = comparison.write_summary(workdir, results)
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    by_method = {r["method"]: r for r in summary["exact_match"]}
    assert by_method["mle"]["n"] == 2
    assert by_method["mle"]["mean"] == pytest.approx(
        np.mean([r["exact_match"] for r in results if r["method"] == "mle"]))
    with pytest.raises(ValueError, match="learned.artifacts"):
        config.learned.artifacts = {"default": ""}
        comparison.method_objective(config, "learned_offline", "swap30")


def test_seeds_trained_together_match_seeds_trained_alone(tmp_path):
    config = noisy.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    data = comparison.build_data(config, "train", "swap30")
    cells = [c for c in comparison.grid(config) if c.method == "loss_truncation"]
    assert [c.seed for c in cells] == [0, 1]
    _, inners, facts = comparison.train_cells(config, cells, data)
    assert facts["seeds_vmapped"] == 2
    (_, alone), _ = comparison.train_cell(config, cells[1], data)
    together = jax.tree.leaves(inners[1]["params"])
    for a, b in zip(together, jax.tree.leaves(alone["params"])):
        np.testing.assert_allclose(a, b, atol=2e-5)
    # Different seeds give different models.
    assert not np.allclose(together[0], jax.tree.leaves(inners[0]["params"])[0])
    with pytest.raises(ValueError, match="differ only in seed"):
        comparison.train_cells(config, [cells[0], dataclasses.replace(cells[1], method="mle")],
                               data)


def test_grid_follows_the_noise_order():
    config = noisy.get_config("tiny")
    config.seeds, config.methods, config.transfer.noises = 1, ("mle",), ()
    assert [c.noise for c in comparison.grid(config)][::2] == list(config.noise_order)
    config.noise_order = ("swap30", "swap70")
    with pytest.raises(ValueError, match="swap70"):
        comparison.grid(config)


def test_grid_runs_only_the_family_sets_of_the_set_order():
    config = noisy.get_config("tiny")
    config.seeds, config.methods, config.transfer.noises = 1, ("mle",), ()
    config.set_order = ("transfer",)
    assert {c.family_set for c in comparison.grid(config)} == {"transfer"}
    config.set_order = ("train", "heldout")
    with pytest.raises(ValueError, match="heldout"):
        comparison.grid(config)
