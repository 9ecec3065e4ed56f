"""The noisy-demonstration comparison: cells, resume, and a summary that matches the cells."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from configs import noisy_demonstrations as noisy
from learned_loss.core import timing
from learned_loss.data import tasks
from learned_loss.objectives import artifact, learned
from learned_loss.studies import noisy_demonstrations, statistics, token_arms


def test_paired_summary_with_adjusted_p(tmp_path):
    rows = [dict(family_set="train", noise="swap30", model="nano", method=m, seed=s,
                 exact_match=v, graded=v, test_nll=1.0 - v)
            for m, values in (("mle", (0.5, 0.6, 0.55)), ("loss_truncation", (0.6, 0.8, 0.7)),
                              ("mle_2x", (0.52, 0.6, 0.56)))
            for s, v in enumerate(values)]
    summary = {r["method"]: r for r in noisy_demonstrations.summarize(rows)}
    lt = summary["loss_truncation"]
    assert lt["mean"] == pytest.approx(0.7) and lt["n"] == 3
    # t_{0.975, 2} = 4.303; sd 0.1; n 3.
    assert lt["ci95"] == pytest.approx(4.3027 * 0.1 / np.sqrt(3), rel=1e-4)
    assert lt["vs_mle"] == pytest.approx(0.15)
    assert lt["vs_mle_ci95"] == pytest.approx(
        4.3027 * np.std([0.1, 0.2, 0.15], ddof=1) / np.sqrt(3), rel=1e-4)
    p_lt = stats.ttest_rel([0.6, 0.8, 0.7], [0.5, 0.6, 0.55]).pvalue
    p_2x = stats.ttest_rel([0.52, 0.6, 0.56], [0.5, 0.6, 0.55]).pvalue
    assert lt["vs_mle_p"] == pytest.approx(p_lt)
    # Holm over the two tests against MLE.
    assert [lt["vs_mle_p_adjusted"], summary["mle_2x"]["vs_mle_p_adjusted"]] == pytest.approx(
        statistics.holm([p_lt, p_2x]))
    assert "vs_mle" not in summary["mle"]
    table = noisy_demonstrations.markdown(noisy_demonstrations.summarize(rows), "exact_match")
    assert (f"| train | swap30 | nano | loss_truncation | 0.700 ± {lt['ci95']:.3f} | +0.150 ± "
            f"{lt['vs_mle_ci95']:.3f} | {statistics.format_p(p_lt)} | "
            f"{statistics.format_p(lt['vs_mle_p_adjusted'])} | 3 |") in table
    assert "| train | swap30 | nano | mle | 0.550 ± " in table and " |  |  |  | 3 |" in table
    noisy_demonstrations.write_summary(str(tmp_path), rows)
    text = (tmp_path / "summary.md").read_text()
    record = json.loads((tmp_path / "findings.json").read_text())
    assert text.startswith("## Findings\n") and record["correction"] == "holm"
    assert [f["a"] for f in record["findings"]] == ["loss_truncation", "mle_2x"]
    for f in record["findings"]:
        assert f["text"] in text and f["group"] == "train/swap30/nano"
        assert f["significant"] == (f["p_adjusted"] < 0.05) == (" beats " in f["text"])


def _artifact(path, roles=None):
    features = ("log_prob", "answer_log_prob")
    theta = dict(learned.init_token_loss(jax.random.key(0), features, hidden=4),
                 b1=np.float32(-1.0))
    record = {} if roles is None else {"provenance": {"extra": {"families_by_role": roles}}}
    artifact.save(str(path), "learned_token_loss", theta,
                  {"features": list(features), "hidden": 4}, {}, record)
    return str(path)


def test_an_artifact_meta_trained_on_an_evaluation_family_is_refused(tmp_path):
    config = noisy.get_config("smoke")
    config.methods = ("mle", "learned_offline")
    evaluated = config.family_sets.transfer[0]
    cells = noisy_demonstrations.grid(config)
    for roles, message in (
            (None, "does not record the families"),
            ({"meta_train": ["list_length"], "meta_valid": [evaluated]},
             f"arm learned_offline gives the evaluation family {evaluated} the meta role "
             f"'meta_valid'"),
            ({"finetune": [evaluated]}, "'meta_train'")):  # whatever role it had, it is meta
        config.learned.artifacts = {"default": _artifact(tmp_path / str(len(message)), roles)}
        with pytest.raises(tasks.TaskError, match=message):
            noisy_demonstrations.run_cells(config, str(tmp_path / "w"), cells, log=lambda _: None)
        assert not os.path.exists(tmp_path / "w" / "cells" / f"{cells[0].key}.json")
    config.learned.artifacts = {"default": _artifact(
        tmp_path / "ok", {"meta_train": ["list_length"], "meta_valid": ["count_words"]})}
    roles = token_arms.check_roles(config, cells)
    assert roles["learned_offline"]["meta_valid"] == ["count_words"]
    assert roles["mle"] == {"finetune": sorted(config.family_sets.transfer)}


def test_cells_run_resume_and_summarize(tmp_path):
    art = _artifact(tmp_path / "artifact", {"meta_train": ["list_length"],
                                            "meta_valid": ["count_words"]})
    config = noisy.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    config.methods = ("mle", "learned_offline")
    config.learned.artifacts = {"default": art}
    workdir = str(tmp_path / "w")
    cells = noisy_demonstrations.grid(config)
    assert [c.key for c in cells] == ["transfer-swap30-mle-nano-s0",
                                      "transfer-swap30-learned_offline-nano-s0",
                                      "transfer-swap30-mle-nano-s1",
                                      "transfer-swap30-learned_offline-nano-s1"]
    results = noisy_demonstrations.run_cells(config, workdir, cells[:2], log=lambda _: None)
    assert results[1]["theta_source"] == art
    assert all(0.0 <= r["exact_match"] <= 1.0 and np.isfinite(r["test_nll"]) for r in results)
    assert results[0]["corrupted_rows"] > 0
    # The learned method's weights on corrupted and clean rows (the diagnosis), in (0, 2).
    assert all(0.0 < results[1][k] < 2.0 for k in ("weight_noisy", "weight_clean"))
    assert "weight_noisy" not in results[0]
    # Every cell: the final model's NLL of the corrupted and the clean rows as demonstrated.
    assert all(np.isfinite(r[k]) for r in results for k in token_arms.FIT_FACTS)
    # Per-prompt correctness: one entry per test prompt, averaging to the families' scores.
    per_prompt = results[0]["per_prompt"]
    assert len(per_prompt["input_id"]) == len(set(per_prompt["input_id"])) == 2 * 2
    assert {tasks.split_of(i) for i in per_prompt["input_id"]} == {"test"}
    seen = results[0]["data_seen"]
    assert seen["noisy_demonstrations"] == results[0]["train_rows"] and seen["tokens"] == (
        config.steps * config.batch_size * config.data.seq_len)
    # A re-run reads finished cells instead of training them again.
    stamp = os.path.getmtime(os.path.join(workdir, "cells", cells[0].key + ".json"))
    results = noisy_demonstrations.run_cells(config, workdir, cells, log=lambda _: None)
    assert os.path.getmtime(os.path.join(workdir, "cells", cells[0].key + ".json")) == stamp
    summary = noisy_demonstrations.write_summary(workdir, results)
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    by_method = {r["method"]: r for r in summary["exact_match"]}
    assert by_method["mle"]["n"] == 2
    assert by_method["mle"]["mean"] == pytest.approx(
        np.mean([r["exact_match"] for r in results if r["method"] == "mle"]))
    with open(os.path.join(workdir, "findings.json")) as f:
        assert [(t["a"], t["b"], t["n"]) for t in json.load(f)["findings"]] == [
            ("learned_offline", "mle", 2)]
    with pytest.raises(ValueError, match="learned.artifacts"):
        config.learned.artifacts = {"default": ""}
        token_arms.method_objective(config, "learned_offline", "swap30")


def test_seeds_trained_together_match_seeds_trained_alone(tmp_path):
    config = noisy.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    data = [token_arms.build_data(config, "transfer", "swap30", s) for s in (0, 1)]
    # Each seed has its own data: other inputs, other corruptions, other test prompts.
    assert not np.array_equal(data[0].train.inputs, data[1].train.inputs)
    assert {e.prompt for e in data[0].test_examples} != {e.prompt for e in data[1].test_examples}
    cells = [c for c in noisy_demonstrations.grid(config) if c.method == "loss_truncation"]
    assert [c.seed for c in cells] == [0, 1]
    _, inners, facts = token_arms.train_cells(config, cells, data)
    assert facts["seeds_in_program"] == 2
    (_, alone), _ = token_arms.train_cell(config, cells[1], data[1])
    together = jax.tree.leaves(inners[1]["params"])
    for a, b in zip(together, jax.tree.leaves(alone["params"])):
        np.testing.assert_allclose(a, b, atol=2e-5)
    # Different seeds give different models.
    assert not np.allclose(together[0], jax.tree.leaves(inners[0]["params"])[0])
    with pytest.raises(ValueError, match="differ only in seed"):
        token_arms.train_cells(config, [cells[0], dataclasses.replace(cells[1], method="mle")],
                               data)
    # mle_clean trains on the same inputs with their gold answers.
    clean = token_arms.rows_of("mle_clean", data[0])
    np.testing.assert_array_equal(clean.inputs[~data[0].train.corrupted],
                                  data[0].train.inputs[~data[0].train.corrupted])
    assert not clean.corrupted.any() and data[0].train.corrupted.any()


def test_a_group_of_the_shapes_of_an_earlier_one_compiles_nothing(tmp_path):
    """A group of the settings and shapes of an earlier one (another seed's data, a copy of the
    config, other starting parameters) runs the earlier group's programs: its runner is the
    same object, and the parameters it starts from are an argument, not constants."""
    config = noisy.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    model = token_arms.model_of(config.model)
    start = [model.init(jax.random.key(k), jnp.zeros((1, config.data.seq_len), jnp.int32))
             for k in (0, 1)]
    cells = [token_arms.Cell("transfer", "swap30", "loss_truncation", config.model.variant, s)
             for s in (0, 1)]
    data = [token_arms.build_data(config, "transfer", "swap30", s) for s in (0, 1)]
    copy = ml_collections.ConfigDict(config.to_dict())
    objective, _ = token_arms.method_objective(config, "loss_truncation", "swap30")
    assert token_arms.runner_of(config, model, objective, 8, False, True) is \
        token_arms.runner_of(copy, model, objective, 8, False, True)
    timing.reset()
    with timing.stage("first"):
        token_arms.train_cells(config, cells[:1], data[:1], init_params=start[0], segments=2)
    with timing.stage("second"):
        _, inners, _ = token_arms.train_cells(copy, cells[1:], data[1:], init_params=start[1],
                                              segments=2)
    rows = {r["stage"]: r for r in timing.breakdown()["stages"]}
    assert rows["second"]["programs"] == 0, rows
    # Trained from its own start (an argument of the shared program): the same cell from the
    # first group's start is another model.
    _, other, _ = token_arms.train_cells(config, cells[1:], data[1:], init_params=start[0],
                                         segments=2)
    assert not np.array_equal(jax.tree.leaves(inners[0]["params"])[0],
                              jax.tree.leaves(other[0]["params"])[0])


def test_grid_follows_the_noise_order():
    config = noisy.get_config("tiny")
    config.seeds, config.methods, config.transfer.noises = 1, ("mle",), ()
    assert [c.noise for c in noisy_demonstrations.grid(config)] == list(config.noise_order)
    config.noise_order = ("swap30", "swap70")
    with pytest.raises(ValueError, match="swap70"):
        noisy_demonstrations.grid(config)


def test_grid_runs_only_the_family_sets_of_the_set_order():
    config = noisy.get_config("tiny")
    config.seeds, config.methods, config.transfer.noises = 1, ("mle",), ()
    config.set_order = ("transfer",)
    assert {c.family_set for c in noisy_demonstrations.grid(config)} == {"transfer"}
    config.set_order = ("train", "heldout")
    with pytest.raises(ValueError, match="heldout"):
        noisy_demonstrations.grid(config)
