"""The compare run end to end: cells scored alike from one cached pre-training, a report that
matches the cells, resume without recomputing, clear refusals of bad configs."""

import json
import os
import re
import subprocess
import time
from concurrent import futures

import jax
import numpy as np
import pytest

from configs import compare as compare_config
from learned_loss.core import checkpoint, cli, files, pretraining, train
from learned_loss.data import tasks
from learned_loss.objectives import artifact
from learned_loss.studies import arms, compare, sweep, token_arms
from tests import runs, storage_emulator
from tools import browser

MODULE = "experiments.compare_objectives"
CONFIG = "configs/compare.py:smoke"


def _run(workdir, cache, *overrides, timeout=900):
    env = runs.env(1, LEARNED_LOSS_CACHE=str(cache))
    return subprocess.run(runs.command(MODULE, workdir, CONFIG, *overrides), cwd=runs.ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _cells(workdir):
    out = {}
    for name in sorted(os.listdir(os.path.join(workdir, "cells"))):
        with open(os.path.join(workdir, "cells", name)) as f:
            out[name[:-len(".json")]] = json.load(f)
    return out


def _table(markdown):
    """{(noise, objective): [cells of the report's summary table]}."""
    rows = {}
    for line in markdown.split("\n## Summary\n")[1].split("\n## ")[0].splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if line.startswith("|") and parts[0] not in ("noise", "---"):
            rows[(parts[0], parts[1])] = parts[2:]
    return rows


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One pre-training cache for the end-to-end runs of this file: the smoke config's
    pre-training is trained by the first of them and read back by the others."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cache):
    """The smoke comparison's workdir, run once in one process."""
    workdir = tmp_path_factory.mktemp("smoke") / "w"
    first = _run(workdir, cache)
    assert first.returncode == 0, first.stderr[-3000:]
    return workdir


def test_smoke_compare_cells_report_and_resume(smoke, cache):
    workdir = smoke
    config = compare_config.get_config("smoke")
    cells = _cells(workdir)
    assert sorted(cells) == [f"{o}-swap30-s{s}" for o in ("loss_truncation", "mle", "mle_clean")
                             for s in (0, 1)]
    steps, points = config.steps, config.eval.curve_points
    for cell in cells.values():
        m = cell["metrics"]
        assert 0.0 <= m["exact_match"] <= m["graded"] + 1e-9 <= 1.0 + 1e-9
        assert np.isfinite(m["kl"]) and m["length"] >= 0 and m["test_nll"] > 0
        assert set(cell["families"]) == set(config.families)
        # Curve: the pre-trained model, each segment, the end.
        assert [p["step"] for p in cell["curve"]] == [steps * i // points
                                                      for i in range(points + 1)]
        assert cell["curve"][-1]["exact_match"] == m["exact_match"]
        assert cell["compute"]["tokens"] == steps * config.batch_size * config.data.seq_len
        # Per-prompt correctness on the seed's own test inputs; the data the arm saw.
        per_prompt = cell["per_prompt"]
        assert np.mean(per_prompt["exact_match"]) == pytest.approx(m["exact_match"])
        assert {tasks.split_of(i) for i in per_prompt["input_id"]} == {"test"}
        seen = cell["data_seen"]
        noisy = seen["noisy_demonstrations"]
        if cell["objective"] == "mle_clean":
            assert noisy == 0 and seen["clean_demonstrations"] == cell["facts"]["train_rows"]
        else:
            assert noisy == cell["facts"]["train_rows"] and seen["clean_demonstrations"] == 0
    # Each cell records the hand-made setting it trained with (the smoke variant tunes
    # nothing: loss truncation keeps its configured drop fraction, {} in place).
    assert not (workdir / "tuning.json").exists() and config.tuning.seeds == 0
    assert [cell["facts"]["setting"] for cell in cells.values()] == [{}] * len(cells)
    # The seeds resample the test inputs; arms of one seed are scored on the same prompts.
    prompts = {k: tuple(c["per_prompt"]["input_id"]) for k, c in cells.items()}
    assert prompts["mle-swap30-s0"] == prompts["mle_clean-swap30-s0"]
    assert prompts["mle-swap30-s0"] != prompts["mle-swap30-s1"]
    for s in (0, 1):  # The pre-trained model's point is shared by the arms of one seed.
        assert len({c["curve"][0]["exact_match"] for k, c in cells.items()
                    if k.endswith(f"s{s}")}) == 1

    # The report's table is the cells' mean over seeds.
    rows = _table((workdir / "report.md").read_text())
    for objective in ("mle", "loss_truncation"):
        ems = [cells[f"{objective}-swap30-s{s}"]["metrics"]["exact_match"] for s in (0, 1)]
        kls = [cells[f"{objective}-swap30-s{s}"]["metrics"]["kl"] for s in (0, 1)]
        row = rows[("swap30", objective)]
        assert row[0].startswith(f"{np.mean(ems):.3f} ± ")
        assert row[2].startswith(f"{np.mean(kls):.3f} ± ")
        assert row[-1] == "2"
    # The report gives the headroom and the data seen per arm.
    markdown = (workdir / "report.md").read_text()
    assert "## Headroom recovered" in markdown and "## Data seen per arm" in markdown
    # The report opens offline in headless Chromium: every plot decodes, nothing outside.
    html, png = str(workdir / "report.html"), str(workdir / "report.png")
    rendering = browser.render(html, screenshot=png)
    assert browser.problems(html, rendering) == []
    # exact match by arm, families, curves
    assert len(rendering.images) == len(os.listdir(workdir / "plots")) == 3
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # The pre-training is cached under its config hash, recorded in the provenance.
    pre = cache / f"pretrain-{pretraining.cache_key(config.pretrain)}"
    assert checkpoint.finished(str(pre), config.pretrain.train.num_steps)
    with open(workdir / "provenance.json") as f:
        start = json.load(f)["starts"][-1]
    assert start["extra"]["pretrain"]["cache_key"] == pretraining.cache_key(config.pretrain)
    assert set(start["extra"]["data_hashes"]) == {"swap30-s0", "swap30-s1"}
    # Every arm's families by role: the evaluation families have task roles only.
    roles = start["extra"]["families_by_role"]
    assert start["extra"]["evaluation_families"] == sorted(config.families)
    assert roles["mle"] == {"finetune": sorted(config.families)}
    verbatim = start["extra"]["verbatim_in_pretraining"]
    assert verbatim["test_prompts"] == 2 * 2 * config.eval.per_family
    assert 0 <= verbatim["in_pretraining_text"] <= verbatim["test_prompts"]
    # The wall time by stage, compiling and running apart, is kept in W/timing.json.
    kept = json.loads((workdir / compare.TIMING_FILE).read_text())["runs"]
    assert [r["status"] for r in kept] == ["finished"]
    stages = {r["stage"]: r for r in kept[0]["breakdown"]["stages"]}
    assert list(stages) == ["pre-training", "data", "tuning", "pre-trained model scored",
                            "token mle", "token mle_clean", "token loss_truncation", "report"]
    for row in stages.values():
        assert row["wall_s"] >= row["compile_s"] >= 0 and row["entered"] == 1
    assert stages["token mle"]["programs"] > 0 and stages["token mle"]["compile_s"] > 0
    total = kept[0]["breakdown"]["total"]
    assert total["programs"] == sum(r["programs"] for r in stages.values()) + kept[0][
        "breakdown"]["outside"]["programs"]

    # A re-run recomputes nothing; a removed cell is recomputed alone, with the same numbers.
    stamps = {k: os.path.getmtime(workdir / "cells" / f"{k}.json") for k in cells}
    os.remove(workdir / "cells" / "mle-swap30-s1.json")
    second = _run(workdir, cache)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing the pre-trained checkpoint" in second.stderr
    assert "6 cells (5 done)" in second.stderr
    again = _cells(workdir)
    for key, stamp in stamps.items():
        if key != "mle-swap30-s1":
            assert os.path.getmtime(workdir / "cells" / f"{key}.json") == stamp
    old, new = cells["mle-swap30-s1"], again["mle-swap30-s1"]
    assert new["metrics"]["exact_match"] == old["metrics"]["exact_match"]
    assert new["metrics"]["test_nll"] == pytest.approx(old["metrics"]["test_nll"], abs=1e-4)
    assert new["families"] == old["families"]
    # The resumed run adds its own breakdown, which says what it found done.
    kept = json.loads((workdir / compare.TIMING_FILE).read_text())["runs"]
    assert [r["status"] for r in kept] == ["finished", "finished"]
    stages = {r["stage"]: r for r in kept[1]["breakdown"]["stages"]}
    assert stages["pre-training"]["notes"] == ["pre-training done before"]
    assert (stages["token mle"]["entered"], stages["token mle"]["skipped"]) == (1, 0)
    assert (stages["token mle_clean"]["entered"], stages["token mle_clean"]["skipped"]) == (0, 1)
    assert "wall time by stage" in second.stderr and "token mle_clean" in second.stderr

    # Other settings in the same workdir: the finished cells are refused (in process: before
    # anything trains), not reported as computed under them, and nothing is changed.
    changed = compare_config.get_config("smoke")
    changed.optimizer.lr = 0.01
    with pytest.raises(cli.UserError, match="computed with other settings"):
        compare.run(changed, str(workdir), _never_pretrain)
    assert _cells(workdir) == again
    assert len(json.loads((workdir / compare.TIMING_FILE).read_text())["runs"]) == 2


def test_two_hosts_compare_in_a_bucket_and_compute_the_cells_of_one(smoke, cache):
    """A 2-host job (two processes on this machine, 1 CPU device each, gloo between them) with
    --workdir=gs://...: the cells, provenance, tuning-free report, findings and plots are
    written to the bucket (a local GCS emulator) and read back from there, and the cells are
    those of the single-process smoke run, bitwise (the same programs on the same CPU). The
    pre-training comes from the shared local cache (a bucket cannot hold its file lock:
    refused in one line)."""
    workdir = storage_emulator.new_folder("compare")
    runs.finish(runs.start_pair(MODULE, workdir, CONFIG, "--config.objectives=('mle','mle_clean')",
                                devices=1, LEARNED_LOSS_CACHE=str(cache)))
    assert not os.path.exists(os.path.join(runs.ROOT, "gs:"))  # Nothing went to ./gs:/...
    names = sorted(files.listdir(os.path.join(workdir, "cells")))
    assert names == [f"{o}-swap30-s{s}.json" for o in ("mle", "mle_clean") for s in (0, 1)]
    cells = {n[:-len(".json")]: files.read_json(os.path.join(workdir, "cells", n))
             for n in names}
    single = _cells(smoke)
    for key, cell in cells.items():
        assert cell["metrics"]["exact_match"] == single[key]["metrics"]["exact_match"], key
        assert cell["metrics"]["test_nll"] == pytest.approx(single[key]["metrics"]["test_nll"],
                                                            abs=1e-4)
        assert cell["per_prompt"] == single[key]["per_prompt"]
    rows = _table(files.read_text(os.path.join(workdir, "report.md")))
    ems = [cells[f"mle-swap30-s{s}"]["metrics"]["exact_match"] for s in (0, 1)]
    assert rows[("swap30", "mle")][0].startswith(f"{np.mean(ems):.3f} ± ")
    assert "<html" in files.read_text(os.path.join(workdir, "report.html"))
    assert files.read_json(os.path.join(workdir, "findings.json"))
    assert len(files.listdir(os.path.join(workdir, "plots"))) == 3
    starts = files.read_json(os.path.join(workdir, "provenance.json"))["starts"]
    # One start recorded, process 0's, of a job of two hosts.
    assert [(s["devices"]["process_count"], s["devices"]["process_index"]) for s in starts] == [
        (2, 0)]
    start = starts[0]
    config = compare_config.get_config("smoke")
    assert start["extra"]["pretrain"]["cache_key"] == pretraining.cache_key(config.pretrain)
    assert start["extra"]["pretrain"]["workdir"].startswith(str(cache))
    with pytest.raises(cli.UserError, match="pre-training cache .* must be a local folder"):
        pretraining.cache_root(workdir)


def test_a_cell_trained_with_another_tuned_setting_is_refused(tmp_path):
    """A cell's settings hash covers the config, not its arm's tuning choice: a re-tuning that
    chooses otherwise (a removed tuning folder, another pre-trained start) must not reuse it."""
    keys = ("gce-swap30-s0", "gce-swap30-s1")
    grid = compare.Grid(str(tmp_path), {k: "hash" for k in keys})
    grid.record(keys[0], {"facts": {"setting": {"q": 0.7}}})
    compare.check_setting(grid, keys[0], {"q": 0.7})  # the same choice: kept
    compare.check_setting(grid, keys[1], {"q": 0.3})  # not done yet: nothing to check
    with pytest.raises(cli.UserError, match=r"setting \{'q': 0.7\}, but the tuning now chooses "
                                            r"\{'q': 0.3\}; remove the cells of that arm"):
        compare.check_setting(grid, keys[0], {"q": 0.3})


def test_cell_settings_follow_what_each_cell_depends_on():
    config = compare_config.get_config("smoke")
    arms = ("mle", "learned_tbptt", "ppo", "gce", "learned_online")
    base = {o: compare.cell_settings(config, o, "swap30") for o in arms}

    def changed(**updates):
        c = compare._copy(config)
        for key, value in updates.items():
            section = c
            *parents, leaf = key.split(".")
            for part in parents:
                section = section[part]
            assert leaf in section, key  # a change of a real field, not a new one
            section[leaf] = value
        return {o: compare.cell_settings(c, o, "swap30") != h for o, h in base.items()}

    def only(*names):
        return {o: o in names for o in arms}

    assert changed(**{"optimizer.lr": 0.5}) == only(*arms)
    assert changed(seeds=7) == only()
    assert changed(**{"rlhf.dpo.beta": 0.3}) == only("ppo")
    assert changed(**{"meta.learned_tbptt.outer.num_steps": 9}) == only("learned_tbptt")
    assert changed(**{"noises.swap30.rho": 0.4}) == only(*arms)
    # A method's own section changes its cells only: the other arms are kept.
    assert changed(**{"robust.q": 0.5}) == only("gce")
    assert changed(**{"tuning.seeds": 2}) == only("gce")
    assert changed(**{"learned.lookahead": 5}) == only("learned_tbptt", "learned_online")
    assert changed(**{"early_stopping.evaluations": 3}) == only()


def test_bad_configs_are_refused_before_any_training(tmp_path):
    config = compare_config.get_config("smoke")
    config.objectives = ("mle", "sft_magic")
    with pytest.raises(cli.UserError, match="sft_magic.*choose among"):
        compare.check(config)
    for objectives in (("dpo",), ("mle", "dpo")):
        config = compare_config.get_config("smoke")
        config.objectives = objectives
        with pytest.raises(cli.UserError, match="'mle_clean'"):
            compare.check(config)
    config = compare_config.get_config("smoke")
    config.objectives = ("mle", "mle_clean", "mle_gold_pairs")
    with pytest.raises(cli.UserError, match="add an RLHF arm"):
        compare.check(config)
    config = compare_config.get_config("smoke")
    config.pretrain.model.num_layers = 3
    with pytest.raises(cli.UserError, match="pretrain.model differs"):
        compare.check(config)
    config = compare_config.get_config("smoke")
    config.objectives = ("mle", "mle_clean", "learned_tbptt")
    config.artifacts.learned_tbptt = str(tmp_path / "nowhere")
    with pytest.raises(cli.UserError, match="artifacts.learned_tbptt"):
        compare.check(config)
    # Through the run (what the entry point calls; a UserError is one line and exit 2 there:
    # tests/test_errors.py): the problem named, nothing trained or written.
    config = compare_config.get_config("smoke")
    config.noise_order = ("swap99",)
    config.cache_dir = str(tmp_path / "cache")
    with pytest.raises(cli.UserError, match="swap99"):
        compare.run(config, str(tmp_path / "w"), _never_pretrain)
    assert not (tmp_path / "w" / "cells").exists()


def _never_pretrain(config, path):
    raise AssertionError(f"a refused run must not pre-train ({path})")


def test_an_evaluation_family_in_a_meta_role_is_refused_before_anything_trains(tmp_path):
    config = compare_config.get_config("smoke")
    family = config.families[0]
    config.objectives = ("mle", "mle_clean", "learned_tbptt")
    config.meta.learned_tbptt.meta_valid.families = (family,)
    config.cache_dir = str(tmp_path / "cache")
    message = (f"arm learned_tbptt gives the evaluation family {family} the meta role "
               f"'meta_valid'")
    with pytest.raises(cli.UserError, match=re.escape(message)):
        compare.run(config, str(tmp_path / "w"), _never_pretrain)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "w" / "cells").exists()
    # The same check in the library: the learned reward's families and the pre-training mix.
    config = compare_config.get_config("smoke")
    config.objectives = ("mle", "mle_clean", "learned_reward")
    config.meta.learned_reward.rlhf.tasks.families = (family,)
    with pytest.raises(tasks.TaskError, match="'fitness'|'meta_train'|'meta_valid'"):
        arms.roles(config, str(tmp_path / "w"))
    config = compare_config.get_config("smoke")
    config.pretrain.data.task_mix_per_family = 5
    config.pretrain.tasks.families = (family,)
    with pytest.raises(tasks.TaskError, match="'pretrain_mix'"):
        arms.roles(config, str(tmp_path / "w"))


def test_progress_line_counts_cells_and_estimates_the_rest(tmp_path):
    os.makedirs(tmp_path / "cells")
    (tmp_path / "cells" / "mle-swap30-s0.json").write_text('{"config_hash": "h"}')
    now = [0.0]
    keys = ["mle-swap30-s0", "mle-swap30-s1", "dpo-swap30-s0", "dpo-swap30-s1"]
    with pytest.raises(cli.UserError, match="computed with other settings"):
        compare.Grid(str(tmp_path), dict.fromkeys(keys, "other"))
    grid = compare.Grid(str(tmp_path), dict.fromkeys(keys, "h"), clock=lambda: now[0])
    assert grid.progress() == "[#####...............] 1/4 cells"
    now[0] = 60.0
    grid.record("mle-swap30-s1", {"objective": "mle"})
    # One cell in 60 s, two left: 2 minutes.
    assert grid.progress() == "[##########..........] 2/4 cells | ETA 2.0 min"
    assert os.path.exists(grid.path("mle-swap30-s1"))
    with open(grid.path("mle-swap30-s1")) as f:
        assert json.load(f) == {"objective": "mle", "config_hash": "h"}


def test_rlhf_cells_get_their_learned_settings(tmp_path):
    config = compare_config.get_config("smoke")
    r = compare.rlhf_config(config, "learned_preference", "swap30", 3, str(tmp_path), "/p")
    assert r.algorithms == ("dpo",) and r.dpo.loss_type == "learned"
    assert r.dpo.learned_path == "/p" and r.seed == config.tasks.seed + 3
    assert r.sft_from == compare.sft_dir(str(tmp_path), "swap30", 3)
    r = compare.rlhf_config(config, "learned_reward", "swap30", 0, str(tmp_path), "/r")
    assert r.algorithms == ("rloo",) and r.rl.reward == "learned"
    assert r.rl.learned_reward_path == "/r"
    assert tuple(r.tasks.families) == tuple(config.families)
    ppo = compare.rlhf_config(config, "ppo", "swap30", 0, str(tmp_path))
    assert ppo.rl.reward == "reward_model" and ppo.dpo.loss_type == "sigmoid"
    pairs = 2 * ppo.preferences.seq_len
    reward_model = ppo.reward_model.train.num_steps * ppo.reward_model.global_batch_size * pairs
    assert compare.rlhf_tokens(ppo, "dpo") == reward_model + (
        ppo.dpo.train.num_steps * ppo.dpo.global_batch_size * pairs)
    assert compare.rlhf_tokens(ppo, "ppo") == reward_model + (
        ppo.rl.train.num_steps * ppo.rl.global_batch_size * ppo.rl.samples_per_prompt
        * ppo.preferences.seq_len)


def test_train_cells_from_given_parameters_in_segments():
    config = compare.noisy_view(compare_config.get_config("smoke"))
    config.steps = 4
    data = [token_arms.build_data(config, compare.FAMILY_SET, "swap30", s) for s in (0, 1)]
    cells = [token_arms.Cell(compare.FAMILY_SET, "swap30", "mle", config.model.variant, s)
             for s in (0, 1)]
    model = token_arms.model_of(config.model)
    start = model.init(jax.random.key(42), np.zeros((1, config.data.seq_len), np.int32))
    seen = []
    _, inners, _ = token_arms.train_cells(
        config, cells, data, init_params=start, segments=2,
        on_segment=lambda step, m, inner: seen.append((step, len(inner))))
    assert seen == [(2, 2)]
    # Both seeds started from `start`: after 4 small steps they are still close to it, far
    # closer than a fresh initialisation is.
    fresh = model.init(jax.random.key(0), np.zeros((1, config.data.seq_len), np.int32))
    leaf = lambda p: np.concatenate([np.ravel(x) for x in jax.tree.leaves(p)])
    for inner in inners:
        moved = np.linalg.norm(leaf(inner["params"]) - leaf(start))
        assert moved < 0.5 * np.linalg.norm(leaf(fresh) - leaf(start))
    assert not np.allclose(leaf(inners[0]["params"]), leaf(inners[1]["params"]))


def test_kept_sft_policy_reads_back_and_starts_meta_training_inner_runs(tmp_path):
    from learned_loss.core import policy
    from learned_loss.meta import run as meta_run

    config = compare_config.get_config("smoke")
    model = token_arms.model_of(config.model)
    params = model.init(jax.random.key(7), np.zeros((1, config.data.seq_len), np.int32))
    path = compare.sft_dir(str(tmp_path), "swap30", 0)
    inner = {"params": params, "step": 8,
             "opt_state": train.make_optimizer(config.optimizer).init(params)}
    compare.write_sft(config, path, inner, 0, config.families)
    loaded = policy.load(path)
    assert loaded.step == 8
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    meta = compare._copy(config.meta.learned_tbptt)
    meta.inner.init_from = path
    start = meta_run.initial_params(meta, model)
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    meta.model.num_layers = 2
    with pytest.raises(cli.UserError, match="different model"):
        meta_run.initial_params(meta, model)


def test_learned_and_rlhf_objectives_through_the_compare(tmp_path, cache):
    """Meta-training in the run (learned_rows: PES, one weight per row), online
    meta-weighting, PPO and DPO from the kept MLE model, sharing one reward model, and MLE given
    the gold answers of their pairs."""
    workdir = tmp_path / "w"
    result = _run(workdir, cache, "--config.seeds=1",
                  "--config.objectives=('mle','mle_clean','learned_rows','learned_online','ppo',"
                  "'dpo','mle_gold_pairs')")
    assert result.returncode == 0, result.stderr[-3000:]
    cells = _cells(workdir)
    assert sorted(cells) == ["dpo-swap30-s0", "learned_online-swap30-s0", "learned_rows-swap30-s0",
                             "mle-swap30-s0", "mle_clean-swap30-s0", "mle_gold_pairs-swap30-s0",
                             "ppo-swap30-s0"]
    # The RLHF cells of one (noise, seed) share their pairs and reward model: trained once, in
    # W/rlhf/NOISE-sSEED, and its cost is counted in both cells. Only the first RL run (the
    # report's over-optimization plot) does best-of-n.
    shared = workdir / "rlhf" / "swap30-s0"
    ppo, dpo, mle = (cells[f"{o}-swap30-s0"] for o in ("ppo", "dpo", "mle"))
    assert ppo["facts"]["shared_dir"] == dpo["facts"]["shared_dir"] == str(shared)
    steps = [r["step"] for r in runs.metrics(shared / "reward_model")]
    assert steps[-1] == compare_config.get_config("smoke").rlhf.reward_model.train.num_steps
    for key in ("ppo-swap30-s0", "dpo-swap30-s0"):
        assert not (workdir / "runs" / key / "reward_model").exists()
    stages = json.loads((shared / "stages.json").read_text())
    for cell in (ppo, dpo):
        assert cell["facts"]["shared_seconds"] == stages["seconds"] > 0
        assert cell["compute"]["seconds"] > mle["compute"]["seconds"] + stages["seconds"]
    assert ppo["facts"]["best_of_n"] and not dpo["facts"]["best_of_n"]
    assert json.loads((workdir / "overoptimization.json").read_text())["best_of_n"]["n"]
    dpo_run = json.loads((workdir / "runs" / "dpo-swap30-s0" / "overoptimization.json").read_text())
    assert dpo_run["best_of_n"] is None
    learned = cells["learned_rows-swap30-s0"]
    assert learned["facts"]["artifact"] == str(workdir / "meta" / "learned_rows" / "artifact")
    assert (workdir / "meta" / "learned_rows" / "metrics.jsonl").exists()
    settings = artifact.load(learned["facts"]["artifact"]).settings
    steps = compare_config.get_config("smoke").steps
    assert (settings["granularity"], settings["run_steps"]) == ("row", steps)
    # One weight per row, normalised over the batch: the two kinds of rows weighed together
    # average to 1 over their answer tokens, so one kind is at or above 1 and the other below.
    w = learned["facts"]["weight_noisy"], learned["facts"]["weight_clean"]
    assert min(w) <= 1.0 + 1e-5 <= max(w) + 2e-5 and w[0] != w[1]
    online = cells["learned_online-swap30-s0"]
    assert online["compute"]["tokens"] == 2 * cells["mle-swap30-s0"]["compute"]["tokens"]
    dpo, mle = cells["dpo-swap30-s0"], cells["mle-swap30-s0"]
    assert dpo["facts"]["sft_from"] == str(workdir / "sft" / "swap30-s0")
    assert dpo["compute"]["tokens"] > mle["compute"]["tokens"]
    # DPO's curve continues MLE's (its SFT) past the fine-tuning budget.
    assert dpo["curve"][:len(mle["curve"])] == mle["curve"]
    assert dpo["curve"][-1]["step"] > mle["curve"][-1]["step"]
    # DPO's cell scores DPO's final policy, which has left its SFT model (the MLE cell's): the
    # test NLL recomputed from the DPO stage's checkpoint is the cell's, and not MLE's.
    from learned_loss.core import policy
    from learned_loss.meta import lm_problem

    config = compare_config.get_config("smoke")
    data = token_arms.build_data(compare.noisy_view(config), compare.FAMILY_SET, "swap30", 0)
    final = policy.load(str(workdir / "runs" / "dpo-swap30-s0" / "dpo"))
    rows = {k: jax.numpy.asarray(v) for k, v in data.test_rows.batch().items()}
    nll = float(lm_problem.answer_nll(token_arms.model_of(config.model), final.params, rows))
    assert dpo["metrics"]["test_nll"] == pytest.approx(nll, rel=1e-5)
    assert abs(nll - mle["metrics"]["test_nll"]) > 1e-6
    # The clean data a preference arm sees: the gold answers inside its train pairs, which the
    # gold-pairs control gets as demonstrations on top of MLE's.
    gold = cells["mle_gold_pairs-swap30-s0"]
    assert 0 < dpo["data_seen"]["gold_answers_in_pairs"] == gold["facts"]["gold_rows"]
    assert gold["data_seen"]["gold_answers_in_pairs"] == gold["facts"]["gold_rows"]
    assert dpo["data_seen"]["labeler_queries"] > dpo["data_seen"]["gold_answers_in_pairs"]
    assert mle["data_seen"]["gold_answers_in_pairs"] == 0
    assert learned["data_seen"]["meta_training"]["outer_steps"] == 2
    assert learned["data_seen"]["meta_training"]["seconds"] > 0
    start = json.loads((workdir / "provenance.json").read_text())["starts"][-1]
    roles = start["extra"]["families_by_role"]
    assert set(roles["learned_rows"]["meta_train"]) & set(start["extra"]["evaluation_families"]) \
        == set()
    assert roles["ppo"]["rl_prompts"] == roles["dpo"]["pairs"] == sorted(
        compare_config.get_config("smoke").families)
    report = (workdir / "report.md").read_text()
    assert "meta_training.png" in report and "| swap30 | dpo |" in report


def test_compare_sweep_points_name_real_config_keys():
    points = sweep.load_sweep("configs/compare.py:tiny")
    assert len(points) == 6 and len({json.dumps(p, sort_keys=True) for p in points}) == 6
    config = compare_config.get_config("tiny")
    for point in points:
        for key, value in point.items():
            section = config
            *parents, leaf = key.split(".")
            for part in parents:
                section = section[part]
            assert leaf in section and isinstance(value, type(section[leaf]))


def test_parallel_runs_share_one_pretraining(tmp_path):
    config = compare_config.get_config("smoke")
    config.cache_dir = str(tmp_path)
    steps = config.pretrain.train.num_steps
    calls = []

    def fake_pretrain(pretrain_config, path):  # Writes a finished run, slowly.
        calls.append(path)
        time.sleep(1.0)
        model = token_arms.model_of(config.model)
        params = model.init(jax.random.key(1), np.zeros((1, config.data.seq_len), np.int32))
        inner = {"params": params, "step": pretrain_config.train.num_steps,
                 "opt_state": train.make_optimizer(config.optimizer).init(params)}
        compare.write_sft(config, path, inner, 0, ())

    with futures.ThreadPoolExecutor(2) as pool:
        loaded = list(pool.map(lambda _: compare.pretrained(config, fake_pretrain), range(2)))
    assert calls == [pretraining.cache_dir(config.pretrain, config.cache_dir)]
    assert [p.step for p in loaded] == [steps, steps]


def test_the_pretraining_cache_key_follows_code_data_and_corpus(tmp_path, monkeypatch):
    """A checkpoint built by other code, another task partition or another corpus is never
    read back as this config's: each changes the key, and so the cache folder."""
    config = compare_config.get_config("smoke")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("x = 1\n" * 50)
    config.pretrain.data.text_dir = str(corpus)
    config.pretrain.data.pattern = "*.py"
    key = pretraining.cache_key(config.pretrain)
    assert pretraining.cache_key(config.pretrain) == key  # deterministic
    (corpus / "a.py").write_text("x = 2\n" * 50)
    changed_corpus = pretraining.cache_key(config.pretrain)
    assert changed_corpus != key
    monkeypatch.setattr(tasks.partition, "VERSION", tasks.partition.VERSION + 1)
    changed_partition = pretraining.cache_key(config.pretrain)
    monkeypatch.undo()
    from learned_loss.core import sampling
    monkeypatch.setattr(pretraining, "SOURCES", pretraining.SOURCES + (sampling,))
    changed_code = pretraining.cache_key(config.pretrain)
    assert len({key, changed_corpus, changed_partition, changed_code}) == 4
    assert pretraining.cache_dir(config.pretrain).endswith(f"pretrain-{changed_code}")
