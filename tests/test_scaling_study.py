"""The scaling study: its configs and refusals, the analysis of finished runs (fits recovered from
synthetic runs, the learned objective's advantage), a smoke study end to end with its report and
resume, and meta-training a token loss on the text corpus."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import meta_train as meta_train_config
from configs import scaling as scaling_config
from learned_loss.core import cli, pretraining
from learned_loss.meta import run as meta_run
from learned_loss.objectives import artifact
from learned_loss.report import render as report
from learned_loss.report import studies as study_report
from learned_loss.studies import scaling
from tests import runs


def _synthetic_rows(e=1.7, a=40.0, b=300.0, alpha=0.35, beta=0.3, shift=None, noise=0.003,
                    seed=0):
    """Runs of two objectives on L(N, D) = E + A / N^alpha + B / D^beta with noise; the learned
    objective's NLL is MLE's plus shift(N)."""
    rng = np.random.default_rng(seed)
    rows = []
    sizes = {f"s{i}": int(n) for i, n in enumerate(np.geomspace(5e3, 8e5, 7).round(), 1)}
    for objective in ("mle", "learned"):
        for size, n in sizes.items():
            for steps in (100, 200, 400):
                d = steps * 2048
                loss = e + a / n ** alpha + b / d ** beta
                if objective == "learned" and shift is not None:
                    loss += shift(n)
                rows.append({"objective": objective, "size": size, "steps": steps, "tokens": d,
                             "params": n, "test_nll": loss * np.exp(noise * rng.normal()),
                             "seconds": 1.0})
    return rows


def _fit_cfg(bootstrap=40):
    return ml_collections.ConfigDict({"bootstrap": bootstrap, "level": 0.95})


def test_configs_span_the_sizes_the_study_needs():
    config = scaling_config.get_config("tiny")
    params = sorted(scaling.non_embedding_params(
        ml_collections.ConfigDict(dict(config.pretrain.model.to_dict(), **config.sizes[s])))
        for s in config.size_order)
    assert len(params) >= 6 and params[-1] / params[0] >= 30
    assert len(config.steps) >= 3
    assert params == sorted(set(params))
    # 12 L d^2 for d_ff = 4 d (Kaplan et al. 2020, table 1).
    s1 = config.sizes["s1"]
    assert params[0] == 12 * s1.num_layers * s1.d_model ** 2
    scaling.check(config)
    with pytest.raises(ValueError, match="unknown variant"):
        scaling_config.get_config("huge")


@pytest.mark.parametrize("override, message", [
    ({"objectives": ("mle", "ppo")}, "objectives must be among"),
    ({"size_order": ("s1", "s9")}, "not in sizes"),
    ({"size_order": ("s1",)}, "at least 2 model sizes"),
    ({"steps": (0, 10)}, "positive step counts"),
    ({"artifacts.learned": "/no/such/artifact"}, "is not a folder"),
])
def test_bad_configs_are_refused_before_training(override, message, tmp_path):
    config = scaling_config.get_config("smoke")
    for key, value in override.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    with pytest.raises(cli.UserError, match=message):
        scaling.run(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "runs")


def test_point_config_sets_size_budget_and_objective():
    config = scaling_config.get_config("tiny")
    point = scaling.Point("learned", "s6", 400)
    p = scaling.point_config(config, point, "/a/artifact")
    assert (p.model.d_model, p.model.num_layers) == (96, 4)
    assert p.train.num_steps == p.train.eval_every == p.train.checkpoint_every == 400
    assert p.optimizer.warmup_steps == 40
    assert (p.objective.name, p.objective.path) == ("learned_token_loss", "/a/artifact")
    mle = scaling.point_config(config, scaling.Point("mle", "s1", 100))
    assert mle.objective.name == "mle" and mle.model.d_model == 16
    # The study's config is left as it was.
    assert config.pretrain.train.num_steps != 400 and config.pretrain.objective.name == "mle"
    assert [q.name for q in scaling.points(config)][:2] == ["mle-s1-100", "mle-s1-200"]
    assert len(scaling.points(config)) == 2 * 7 * 3


def test_analyse_recovers_the_exponents_and_extrapolates():
    rows = [r for r in _synthetic_rows() if r["objective"] == "mle"]
    fits = scaling.analyse(rows, _fit_cfg(20))
    c = fits["mle"]["chinchilla"]
    assert abs(c["alpha"] - 0.35) < 0.08 and abs(c["beta"] - 0.3) < 0.08
    assert c["alpha_interval"][0] <= c["alpha"] <= c["alpha_interval"][1]
    assert c["extrapolation"]["relative_error"] < 0.02
    k = fits["mle"]["kaplan"]
    assert fits["mle"]["kaplan_tokens"] == 400 * 2048
    assert k["alpha"] > 0 and k["r2"] > 0.9
    assert k["alpha_interval"][0] <= k["alpha"] <= k["alpha_interval"][1]
    assert len(k["extrapolation"]["observed"]) == 1
    # fit.grid holds the Chinchilla fit's starting values: a grid of four parameters for its
    # five is refused by the fit, so the field is read.
    four = _fit_cfg(2)
    four.grid = ((0.0,), (0.0,), (0.0,), (0.5,))
    with pytest.raises(ValueError, match=r"shape \[G, 5\]"):
        scaling.analyse(rows, four)


def test_advantage_and_verdict_follow_the_runs():
    # Learned better by 0.01 nats per decade of N above 5e3: the advantage grows with scale.
    rows = _synthetic_rows(shift=lambda n: -0.01 * np.log10(n / 5e3), noise=0.0)
    diffs = scaling.advantage(rows)
    assert len(diffs) == 21
    by = {(d["size"], d["tokens"]): d["difference"] for d in diffs}
    assert by[("s1", 204800)] == pytest.approx(0.0, abs=1e-9)
    assert by[("s7", 204800)] == pytest.approx(-0.01 * np.log10(8e5 / 5e3), rel=1e-6)
    study = {"rows": rows, "advantage": diffs}
    assert "advantage grows" in study_report.scaling_verdict(study)
    rows = _synthetic_rows(shift=lambda n: 0.02 * np.log10(n / 5e3), noise=0.0)
    study = {"rows": rows, "advantage": scaling.advantage(rows)}
    assert "deficit grows" in study_report.scaling_verdict(study)
    assert "Only MLE" in study_report.scaling_verdict({"advantage": []})


def _report_rows(markdown):
    """{(size, tokens): {column: value}} of the report's NLL table."""
    lines = markdown.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("| size |"))
    header = [p.strip() for p in lines[start].strip("|").split("|")]
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        parts = [p.strip() for p in line.strip("|").split("|")]
        out[(parts[0], parts[2])] = dict(zip(header, parts))
    return out


def test_smoke_study_end_to_end_with_report_and_resume(tmp_path):
    workdir = tmp_path / "w"
    overrides = ("--config.objectives=('mle',)",)
    first = runs.run("experiments.scaling", workdir, "configs/scaling.py:smoke", *overrides,
                     timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    with open(workdir / "scaling.json") as f:
        study = json.load(f)
    config = scaling_config.get_config("smoke")
    assert len(study["rows"]) == 3 * 2
    # The NLL is read on the corpus's test split (the learned loss's meta-objective reads
    # validation): recomputed here from each run's checkpoint, and not its validation loss.
    batches = scaling.test_batches(config, pretraining.prepare_corpus(config.pretrain))
    for row in study["rows"]:
        run_dir = workdir / "runs" / f"mle-{row['size']}-{row['steps']}"
        last = [r for r in runs.metrics(run_dir) if r["step"] == row["steps"]
                and "valid/loss" in r][-1]
        assert row["test_nll"] == pytest.approx(scaling.test_nll(str(run_dir), batches),
                                                abs=1e-6)
        assert row["test_nll"] != pytest.approx(last["valid/loss"], abs=1e-4)
        assert row["tokens"] == row["steps"] * config.pretrain.data.global_batch_size * 32
    by_size = {r["size"]: r["params"] for r in study["rows"]}
    assert by_size["s1"] < by_size["s2"] < by_size["s3"]
    assert set(study["fits"]) == {"mle"} and "chinchilla" in study["fits"]["mle"]
    assert study["advantage"] == [] and not (workdir / "meta").exists()

    md = (workdir / "report.md").read_text()
    assert md.startswith("# Studies") and "## Scaling laws" in md
    table = _report_rows(md)
    for row in study["rows"]:
        assert table[(row["size"], f"{row['tokens']:,}")]["mle NLL"] == f"{row['test_nll']:.4f}"
    page = (workdir / "report.html").read_text()
    assert "data:image/png;base64," in page and "<h2>Scaling laws</h2>" in page

    # A re-run trains nothing again and writes the same study and report.
    stamps = {p: os.path.getmtime(workdir / "runs" / p / "checkpoints")
              for p in os.listdir(workdir / "runs")}
    second = runs.run("experiments.scaling", workdir, "configs/scaling.py:smoke", *overrides,
                      timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: os.path.getmtime(workdir / "runs" / p / "checkpoints") for p in stamps} == stamps
    with open(workdir / "scaling.json") as f:
        assert json.load(f)["rows"] == study["rows"]
    new_md = (workdir / "report.md").read_text()
    assert new_md.replace("runs of this workdir: 2", "runs of this workdir: 1") == md
    md = new_md

    # A run of other settings is refused (in process: before anything trains), not reported
    # as if it had these.
    changed = scaling_config.get_config("smoke")
    changed.objectives = ("mle",)
    changed.pretrain.optimizer.lr = 0.01
    with pytest.raises(cli.UserError, match="other settings"):
        scaling.run(changed, str(workdir))
    with open(workdir / "scaling.json") as f:
        assert json.load(f)["rows"] == study["rows"]

    # A malformed study file: the report refuses it and the old one is kept.
    (workdir / "scaling.json").write_text("{")
    with pytest.raises(report.ReportError, match="not valid JSON"):
        report.write(str(workdir))
    assert (workdir / "report.md").read_text() == md


def test_meta_training_on_the_text_corpus_writes_an_artifact(tmp_path):
    config = scaling_config.get_config("smoke").meta
    config.data.pattern, config.data.corpus_valid_fraction = "email/**/*.py", 0.1
    meta_run.run(config, str(tmp_path / "meta"))
    art = artifact.load(str(tmp_path / "meta" / "artifact"))
    assert art.name == "learned_token_loss"
    assert tuple(art.settings["features"]) == meta_train_config.TEXT_FEATURES
    with open(tmp_path / "meta" / "provenance.json") as f:
        start = json.load(f)["starts"][-1]
    assert start["extra"]["source"] == "text" and start["extra"]["families"] == []
    records = runs.metrics(tmp_path / "meta")
    assert records[-1]["step"] == config.outer.num_steps
    # The artifact is the theta the run validated last: a fresh meta-validation run (pre-training
    # on other windows of the corpus) under it repeats the logged NLL bit for bit, and one under
    # theta's initialisation the logged MLE baseline, which differs from it.
    setup = meta_run.Setup(config)
    validate, key = setup.validator(), jax.random.key(config.seed + 1)
    assert validate(art.theta, key)["nll"] == records[-1]["meta_valid/nll"]
    assert validate(setup.theta0, key)["nll"] == records[-1]["meta_valid/mle_nll"]
    assert records[-1]["meta_valid/nll"] != records[-1]["meta_valid/mle_nll"]

    online = scaling_config.get_config("smoke").meta
    online.mode = "online"
    with pytest.raises(cli.UserError, match="mode='offline'"):
        meta_run.run(online, str(tmp_path / "online"))
    too_many = scaling_config.get_config("smoke").meta
    too_many.data.pattern, too_many.data.corpus_valid_fraction = "email/**/*.py", 0.1
    too_many.data.windows = 10 ** 7
    with pytest.raises(cli.UserError, match="fewer than the"):
        meta_run.run(too_many, str(tmp_path / "many"))
