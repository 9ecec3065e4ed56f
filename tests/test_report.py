"""Reports: tables that match the cells, findings that lead and agree with their adjusted p,
headroom and data seen worked out by hand, a scope sentence that states only what the records
show, byte-identical regeneration, self-contained HTML, and a failed regeneration that leaves
the old report."""

import json
import re

import numpy as np
import pytest

from learned_loss.report import render as report
from learned_loss.studies import statistics
from tests.report_workdir import OBJECTIVES, write_workdir


def _by_seed(cells, objective):
    return {c["seed"]: c["metrics"]["exact_match"] for c in cells if c["objective"] == objective}


def _summary(md):
    """{objective: cells of the summary table row} in the table's order."""
    lines = md.split("## Summary")[1].split("## ")[0].splitlines()
    rows = [[p.strip() for p in line.strip().strip("|").split("|")] for line in lines
            if line.startswith("| swap30 |")]
    return {r[1]: r for r in rows}


def test_report_table_matches_cells(tmp_path):
    cells = write_workdir(tmp_path)
    report.write(str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    rows = _summary(md)
    mle = _by_seed(cells, "mle")
    for objective in OBJECTIVES:
        mean, half = report.mean_ci(list(_by_seed(cells, objective).values()))
        row = rows[objective]
        assert row[2] == f"{mean:.3f} ± {half:.3f}"
        if objective != "mle":
            test = report.paired(_by_seed(cells, objective), mle)
            assert row[8].startswith(f"{test['mean']:+.3f} ± ")
            assert row[9] == statistics.format_p(test["p"])
            # Adjusted among more tests than one: never below the raw p.
            assert float(row[10]) >= float(row[9])
    # mle first, then the arms by their difference from it, largest first.
    effects = {o: np.mean([v - mle[s] for s, v in _by_seed(cells, o).items()])
               for o in OBJECTIVES if o != "mle"}
    assert list(rows) == ["mle"] + sorted(effects, key=effects.get, reverse=True)
    assert list(rows) != ["mle"] + sorted(effects)  # the fixture tells the two orders apart
    assert "abc123 (dirty: False)" in md and '"tasks": "h1"' in md
    assert "cell swap30/dpo/seed 2: 12.0 s" in md
    assert "input0" not in md  # per-prompt scores are read, not printed
    for name in ("learning_curves.png", "meta_training.png", "overoptimization.png",
                 "families.png", "exact_match.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_findings_lead_and_agree_with_adjusted_p(tmp_path):
    cells = write_workdir(tmp_path)
    report.write(str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert md.index("## Findings") < md.index("## Summary")
    assert re.findall(r"^## .*", md, re.M)[0] == "## Findings"
    record = json.loads((tmp_path / "findings.json").read_text())
    assert record["correction"] == "holm" and record["alpha"] == 0.05
    found = record["findings"]
    # Each arm against mle, then the declared pairing learned_preference vs dpo.
    assert sorted((f["a"], f["b"]) for f in found) == [
        ("dpo", "mle"), ("learned_preference", "dpo"), ("learned_preference", "mle"),
        ("mle_clean", "mle")]
    assert record["tests"] == 4
    raw = [f["p"] for f in found]
    assert [f["p_adjusted"] for f in found] == pytest.approx(statistics.holm(raw))
    for f in found:
        assert f["text"] in md
        assert f["p_adjusted"] >= f["p"]
        assert f["significant"] == (f["p_adjusted"] < 0.05) == (" beats " in f["text"])
        assert f"adjusted p {statistics.format_p(f['p_adjusted'])}" in f["text"]
    dpo = next(f for f in found if (f["a"], f["b"]) == ("dpo", "mle"))
    assert dpo["p"] == pytest.approx(report.paired(_by_seed(cells, "dpo"),
                                                   _by_seed(cells, "mle"))["p"])
    # In this fixture dpo's raw p is below 0.05, but not once corrected among the four tests.
    assert dpo["p"] < 0.05 and not dpo["significant"]
    assert dpo["text"].startswith("No detectable difference between dpo and mle on swap30")


def test_bh_correction_is_read_from_the_config(tmp_path):
    write_workdir(tmp_path)
    path = tmp_path / "provenance.json"
    prov = json.loads(path.read_text())
    prov["starts"][-1]["config"]["statistics"] = {"correction": "bh"}
    path.write_text(json.dumps(prov))
    report.write(str(tmp_path))
    record = json.loads((tmp_path / "findings.json").read_text())
    assert record["correction"] == "bh"
    assert [f["p_adjusted"] for f in record["findings"]] == pytest.approx(
        statistics.benjamini_hochberg([f["p"] for f in record["findings"]]))
    assert "adjusted p (Benjamini-Hochberg 1995)" in (tmp_path / "report.md").read_text()
    prov["starts"][-1]["config"]["statistics"] = {"correction": "bonferroni"}
    path.write_text(json.dumps(prov))
    with pytest.raises(report.ReportError, match="'holm', 'bh'"):
        report.write(str(tmp_path))


def test_headroom_and_data_seen_by_hand(tmp_path):
    cells = write_workdir(tmp_path)
    report.write(str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    mle, clean = _by_seed(cells, "mle"), _by_seed(cells, "mle_clean")
    arm = _by_seed(cells, "learned_preference")
    fraction = (np.mean([arm[s] - mle[s] for s in mle])
                / np.mean([clean[s] - mle[s] for s in mle]))
    row = next(line for line in md.split("## Headroom recovered")[1].splitlines()
               if line.startswith("| swap30 | learned_preference |"))
    assert row.startswith(f"| swap30 | learned_preference | {fraction:.3f} | [")
    gap = report.paired(clean, mle)
    assert f"| {gap['mean']:+.3f} ± {gap['ci95']:.3f} (n 3) | 3 |" in row
    assert "| swap30 | mle_clean | 0." not in md.split("## Headroom recovered")[1].split("## ")[0]
    # Data seen: meta-training seconds 30, 31, 32 average to 31; dpo did no meta-training.
    seen = md.split("## Data seen per arm")[1].split("## ")[0]
    assert "| swap30 | learned_preference | 100 | 0 | 50 | – | 50 | 1,000 | 31 | 5,000 |" in seen
    assert "| swap30 | dpo | 100 | 0 | 50 | – | 50 | 1,000 | – | – |" in seen


def test_sections_without_their_inputs_are_left_out(tmp_path):
    write_workdir(tmp_path)
    for path in (tmp_path / "cells").glob("*mle_clean*"):
        path.unlink()
    for path in (tmp_path / "cells").glob("*.json"):
        cell = json.loads(path.read_text())
        del cell["data_seen"]
        path.write_text(json.dumps(cell))
    # A meta-training record with none of the plotted keys: no empty plot.
    (tmp_path / "meta" / "token_tbptt" / "metrics.jsonl").write_text('{"step": 0, "x": 1}\n')
    report.write(str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "## Headroom recovered" not in md and "## Data seen per arm" not in md
    assert "meta_training.png" not in md and not (tmp_path / "plots" / "meta_training.png").exists()


def test_scope_states_only_what_the_records_show(tmp_path):
    write_workdir(tmp_path)
    report.write(str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert ("Scored on the clean test inputs of add, parity (evaluation families). No arm gave "
            "them a meta role (meta-training, meta-validation, fitness, tuning, pre-training "
            "mix); their task roles: fine-tuning (dpo, learned_preference, mle, mle_clean), "
            "preference pairs (dpo, learned_preference).") in md
    prov = json.loads((tmp_path / "provenance.json").read_text())
    arms = list(OBJECTIVES)
    roles = prov["starts"][-1]["extra"]["families_by_role"]
    roles["learned_preference"]["meta_valid"] = ["parity"]
    roles["mle"]["unlisted_role"] = ["add"]
    del roles["mle_clean"]
    text = report.scope(prov, arms)
    assert "Other roles on them: unlisted_role (mle)." in text
    assert "Meta roles on them: meta-validation (learned_preference); their task roles:" in text
    assert text.endswith("No roles are recorded for mle_clean.")
    del prov["starts"][-1]["extra"]["families_by_role"]
    assert report.scope(prov, arms) == ("Scored on the clean test inputs of add, parity "
                                        "(evaluation families).")
    assert report.scope(None, arms) == "Scored on clean test inputs."


def test_regeneration_is_byte_identical_and_self_contained(tmp_path):
    write_workdir(tmp_path)
    report.write(str(tmp_path))
    names = ("report.md", "report.html", "findings.json")
    first = {n: (tmp_path / n).read_bytes() for n in names}
    report.write(str(tmp_path))
    assert {n: (tmp_path / n).read_bytes() for n in names} == first
    page = first["report.html"].decode()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 5
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "http" not in page


def test_bad_inputs_keep_the_old_report(tmp_path):
    with pytest.raises(report.ReportError, match="no cells"):
        report.write(str(tmp_path))
    write_workdir(tmp_path)
    report.write(str(tmp_path))
    old = (tmp_path / "report.html").read_bytes()
    (tmp_path / "cells" / "swap30-mle-s0.json").write_text("{torn")
    with pytest.raises(report.ReportError, match="not valid JSON"):
        report.write(str(tmp_path))
    assert (tmp_path / "report.html").read_bytes() == old
    (tmp_path / "cells" / "swap30-mle-s0.json").write_text('{"objective": "mle"}')
    with pytest.raises(report.ReportError, match="lacks"):
        report.write(str(tmp_path))


def test_overoptimization_with_a_failed_fit_plots_its_points(tmp_path):
    write_workdir(tmp_path)
    path = tmp_path / "overoptimization.json"
    over = json.loads(path.read_text())
    over["best_of_n"]["fit_gold"] = {"error": "fewer than 3 distinct d"}
    path.write_text(json.dumps(over))
    report.write(str(tmp_path))
    with_error = (tmp_path / "plots" / "overoptimization.png").read_bytes()
    over["best_of_n"].pop("fit_gold")
    path.write_text(json.dumps(over))
    report.write(str(tmp_path))
    # The failed fit draws nothing: the same plot as without a fit.
    assert (tmp_path / "plots" / "overoptimization.png").read_bytes() == with_error


def test_several_artifacts_enter_the_tests_by_their_mean_and_show_their_spread(tmp_path):
    cells = write_workdir(tmp_path)
    # A second artifact of the learned arm (meta seed 1), crossed with the same seeds.
    extra = {}
    for cell in [c for c in cells if c["objective"] == "learned_preference"]:
        other = json.loads(json.dumps(cell))
        other["meta_seed"] = 1
        other["metrics"]["exact_match"] = cell["metrics"]["exact_match"] - 0.1
        extra[cell["seed"]] = other["metrics"]["exact_match"]
        (tmp_path / "cells" / f"swap30-learned_preference-s{cell['seed']}-m1.json").write_text(
            json.dumps(other))
    report.write(str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    first = _by_seed(cells, "learned_preference")
    mean_per_seed = {s: (first[s] + extra[s]) / 2 for s in first}
    mean, half = report.mean_ci(list(mean_per_seed.values()))
    assert _summary(md)["learned_preference"][2] == f"{mean:.3f} ± {half:.3f}"
    assert _summary(md)["learned_preference"][-1] == "3"  # fine-tuning seeds, the paired unit
    test = report.paired(mean_per_seed, _by_seed(cells, "mle"))
    assert _summary(md)["learned_preference"][8].startswith(f"{test['mean']:+.3f} ± ")
    section = md.split("## Across meta-training seeds")[1].split("## ")[0]
    m0, m1 = np.mean(list(first.values())), np.mean(list(extra.values()))
    assert f"m0: {m0:.3f} ± " in section and f"m1: {m1:.3f} ± " in section
    assert f"| {np.std([m0, m1], ddof=1):.3f} |" in section
    assert "mle |" not in section  # arms with one artifact are not listed


def test_learned_arms_are_tested_against_the_best_tuned_baseline(tmp_path):
    """gce ran (cells of mle's, 0.05 higher) and was tuned with sce, which did not run and
    scored lower on the tuning families: gce is the best hand-made baseline, and the learned
    arm is tested against it among all of the report's tests."""
    cells = write_workdir(tmp_path)
    for cell in [c for c in cells if c["objective"] == "mle"]:
        gce = dict(cell, objective="gce", metrics=dict(cell["metrics"], exact_match=cell[
            "metrics"]["exact_match"] + 0.05 * (cell["seed"] + 1)))
        with open(tmp_path / "cells" / f"swap30-gce-s{cell['seed']}.json", "w") as f:
            json.dump(gce, f)
    tables = [{"method": "sce", "noise": "swap30", "score": 0.3, "chosen": {"sce_beta": 1.0},
               "candidates": [{"setting": {"sce_beta": 1.0}, "scores": [0.3, 0.3],
                               "mean": 0.3, "ci95": 0.0}]},
              {"method": "gce", "noise": "swap30", "score": 0.4, "chosen": {"q": 0.5},
               "candidates": [{"setting": {"q": 0.5}, "scores": [0.4, 0.4], "mean": 0.4,
                               "ci95": 0.0},
                              {"setting": {"q": 0.9}, "scores": [0.1, 0.2], "mean": 0.15,
                               "ci95": 0.6}]}]
    (tmp_path / "tuning.json").write_text(json.dumps(tables))
    report.write(str(tmp_path))
    record = json.loads((tmp_path / "findings.json").read_text())
    pairs = sorted((f["a"], f["b"]) for f in record["findings"])
    assert ("learned_preference", "gce") in pairs and ("gce", "mle") in pairs
    assert record["tests"] == 6  # the 4 of the fixture, gce vs mle, the learned arm vs gce
    md = (tmp_path / "report.md").read_text()
    section = md.split("## Tuning of the hand-made baselines")[1].split("## ")[0]
    assert "Best hand-made baseline on swap30: gce." in section
    assert "| swap30 | gce | q=0.5 | 0.400 ± 0.000 | 2 | yes |" in section
    assert "| swap30 | gce | q=0.9 | 0.150 ± 0.600 | 2 |  |" in section
