"""Reports: statistics against scipy, tables that match the cells, byte-identical regeneration,
self-contained HTML, and a failed regeneration that leaves the old report."""

import re

import numpy as np
import pytest
from scipy import stats

from learned_loss import report
from tests.report_workdir import OBJECTIVES, write_workdir


def test_statistics_match_scipy():
    x = [0.5, 0.7, 0.6, 0.65]
    mean, half = report.mean_ci(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert mean == pytest.approx(np.mean(x)) and half == pytest.approx((hi - lo) / 2)
    assert report.mean_ci([0.3]) == (0.3, 0.0)
    a, b = {0: 0.6, 1: 0.7, 2: 0.65, 5: 0.1}, {0: 0.5, 1: 0.55, 2: 0.6}
    p = report.paired(a, b)
    assert p["n"] == 3 and p["mean"] == pytest.approx(np.mean([0.1, 0.15, 0.05]))
    assert p["p"] == pytest.approx(stats.ttest_rel([0.6, 0.7, 0.65], [0.5, 0.55, 0.6]).pvalue)
    # Identical differences: no test (nan), not a division by zero.
    assert np.isnan(report.paired({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})["p"])


def test_report_table_matches_cells(tmp_path):
    cells = write_workdir(tmp_path)
    report.write(str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    for objective in OBJECTIVES:
        ems = [c["metrics"]["exact_match"] for c in cells if c["objective"] == objective]
        mean, half = report.mean_ci(ems)
        row = next(line for line in md.splitlines() if f"| swap30 | {objective} |" in line)
        assert f"{mean:.3f} ± {half:.3f}" in row
        if objective != "mle":
            mle = {c["seed"]: c["metrics"]["exact_match"] for c in cells if c["objective"] == "mle"}
            own = {c["seed"]: c["metrics"]["exact_match"] for c in cells
                   if c["objective"] == objective}
            assert f"{report.paired(own, mle)['mean']:+.3f}" in row
    assert "abc123 (dirty: False)" in md and '"tasks": "h1"' in md
    assert "cell swap30/dpo/seed 2: 12.0 s" in md
    for name in ("learning_curves.png", "meta_training.png", "overoptimization.png",
                 "families.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regeneration_is_byte_identical_and_self_contained(tmp_path):
    write_workdir(tmp_path)
    report.write(str(tmp_path))
    first = {n: (tmp_path / n).read_bytes() for n in ("report.md", "report.html")}
    report.write(str(tmp_path))
    assert {n: (tmp_path / n).read_bytes() for n in first} == first
    page = first["report.html"].decode()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4
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
    import json
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
