"""The studies kernel: records keyed by a settings hash, and stages run once (store.py)."""

import json

import pytest

from learned_loss.core import cli, loop, store


def test_a_record_is_read_back_under_its_settings_and_refused_under_others(tmp_path):
    cells = store.Store(str(tmp_path / "cells"))
    assert cells.read("a", "h1") is None and not cells.exists("a")
    written = cells.write("a", "h1", {"score": 0.5})
    assert written == {"score": 0.5, store.HASH_KEY: "h1"}
    assert cells.read("a", "h1") == written
    with pytest.raises(cli.UserError, match=r"a\.json was computed with other settings "
                                            r"\(config hash h1, now h2\); use a new workdir"):
        cells.read("a", "h2")


def test_an_unreadable_record_is_refused_with_the_fix(tmp_path):
    cells = store.Store(str(tmp_path), fix="delete it")
    (tmp_path / "a.json").write_text("{half")
    with pytest.raises(cli.UserError, match="a.json is unreadable .*; delete it"):
        cells.read("a", "h")
    (tmp_path / "b.json").write_text(json.dumps({"score": 1}))  # No settings hash.
    with pytest.raises(cli.UserError, match="b.json is unreadable"):
        cells.read("b", "h")


def test_claim_records_settings_once_and_refuses_a_change(tmp_path):
    runs = store.Store(str(tmp_path))
    runs.claim("settings", "h1")
    runs.claim("settings", "h1")  # The same settings: a resumed run goes on.
    assert json.loads((tmp_path / "settings.json").read_text()) == {store.HASH_KEY: "h1"}
    with pytest.raises(cli.UserError, match="other settings"):
        runs.claim("settings", "h2")


def test_ensure_runs_a_missing_stage_once_and_adds_up_its_seconds(tmp_path):
    out, timing = tmp_path / "artifact", str(tmp_path / "timing.json")
    store.add_seconds(timing, 2.0)  # An earlier attempt's time.
    calls = []
    build = lambda: (calls.append(1), out.mkdir())  # noqa: E731
    assert store.ensure("stage", out.exists, build, str(tmp_path), timing=timing)
    assert not store.ensure("stage", out.exists, build, str(tmp_path), timing=timing)
    assert calls == [1]
    assert store.recorded_seconds(timing) >= 2.0
    assert store.recorded_seconds(str(tmp_path / "none.json")) != store.recorded_seconds(
        str(tmp_path / "none.json"))  # NaN where nothing was kept


def test_ensure_refuses_a_stage_that_returns_unfinished(tmp_path):
    with pytest.raises(cli.UserError, match="stage in /x stopped before it finished; re-run"):
        store.ensure("stage", lambda: False, lambda: None, "/x")


def test_ensure_stops_the_job_after_a_sigterm(tmp_path, monkeypatch):
    monkeypatch.setitem(loop._SIGTERM, "received", True)
    with pytest.raises(cli.Preempted, match="stopped before stage"):
        store.ensure("stage", lambda: False, lambda: None, "/x")
