"""The emergence study: teacher-forced per-token records, the analysis of jumps against p^L on
curves with known answers, refusals, and a smoke study end to end with its report and resume."""

import json
import os
import signal
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from configs import emergence as emergence_config
from learned_loss.core import cli, loop
from learned_loss.core import model as model_lib

from learned_loss.data import training_rows
from learned_loss.report import studies as study_report
from learned_loss.studies import emergence
from tests import runs

VOCAB = 16


class ShiftModel:
    """Predicts (input + shift) mod V at every position: params is the shift."""

    def apply(self, params, inputs):
        return types.SimpleNamespace(logits=jax.nn.one_hot((inputs + params) % VOCAB, VOCAB))


def _rows(lengths, seq_len=12):
    inputs = np.tile(np.arange(seq_len, dtype=np.int32) % VOCAB, (len(lengths), 1))
    targets = (inputs + 1) % VOCAB
    mask = np.zeros(inputs.shape, np.float32)
    for i, n in enumerate(lengths):
        mask[i, 2:2 + n] = 1.0
    return training_rows.Demonstrations(inputs, targets, mask, np.zeros(len(lengths), bool))


def test_token_records_follow_the_argmax_under_teacher_forcing():
    rows = _rows([3, 5, 7])
    right = emergence.token_records(ShiftModel(), 1, rows, batch_size=2)
    assert [r["length"] for r in right] == [3, 5, 7]
    assert all(all(r["token_correct"]) for r in right)
    wrong = emergence.token_records(ShiftModel(), 2, rows)
    assert not any(any(r["token_correct"]) for r in wrong)
    buckets = emergence.bucket_metrics(right + wrong, (3, 6, 8))
    assert [(b["low"], b["high"], b["count"]) for b in buckets] == [(3, 5, 4), (6, 7, 2)]
    assert all(b["exact_match"] == 0.5 and b["per_token_accuracy"] == 0.5 for b in buckets)


def _synthetic_sizes(p_of_n, lengths=(4, 8, 16)):
    """Sizes whose buckets have per-token accuracy p(N) and exact match exactly p^L."""
    out = []
    for i, n in enumerate(np.geomspace(1e3, 1e6, 7)):
        p = p_of_n(n)
        buckets = [{"low": L, "high": L, "count": 100, "per_token_accuracy": p,
                    "exact_match": p ** L, "predicted_exact_match": p ** L} for L in lengths]
        evals = [{"step": s, "buckets": [dict(b, per_token_accuracy=b["per_token_accuracy"]
                                              * s / 3, exact_match=(p * s / 3) ** b["low"],
                                              predicted_exact_match=(p * s / 3) ** b["low"])
                                         for b in buckets]} for s in (1, 2, 3)]
        out.append({"size": f"s{i}", "params": int(n), "evals": evals, "seconds": 1.0})
    return out


def test_the_jump_moves_with_length_while_per_token_accuracy_is_smooth():
    # p rises linearly in log10 N from 0.5 to 0.98: smooth, no jump.
    sizes = _synthetic_sizes(lambda n: 0.5 + 0.16 * (np.log10(n) - 3))
    a = emergence.analyse(sizes, threshold=0.5)
    jumps = [r["jump"] for r in a["across_sizes"]]
    assert jumps[0] < jumps[1] < jumps[2]  # Longer answers cross later.
    # p = 0.5^(1/L) at the crossing: L = 8 crosses at p = 0.917, i.e. log10 N = 3 + 2.61.
    assert np.log10(jumps[1]) == pytest.approx(3 + (0.5 ** (1 / 8) - 0.5) / 0.16, abs=0.05)
    longest = a["across_sizes"][-1]
    assert longest["exact_match_step"] > longest["per_token_step"]
    assert all(r["p_to_the_l_max_error"] < 1e-12 for r in a["across_sizes"])
    assert a["largest"] == "s6" and len(a["across_steps"]) == 3
    verdict = study_report.emergence_verdict({"analysis": a})
    assert "moves to larger models as answers get longer" in verdict


def test_text_windows_are_spread_over_the_corpus_with_every_token_a_loss_token():
    docs = [{"path": f"d{i}.txt", "text": "abcdefgh" * 40} for i in range(4)]
    rows = training_rows.text_windows(docs, 16, 8)
    assert rows.inputs.shape == rows.targets.shape == rows.mask.shape == (8, 16)
    assert rows.mask.min() == 1.0 and not rows.corrupted.any()
    # Targets are the inputs shifted by one token.
    np.testing.assert_array_equal(rows.inputs[:, 1:], rows.targets[:, :-1])
    with pytest.raises(cli.UserError, match="fewer than the 1000 asked for"):
        training_rows.text_windows(docs, 16, 1000)


def test_pretraining_lowers_the_text_nll():
    """On text with a period of 8 bytes, 40 steps of pre-training leave the validation NLL far
    below a random model's (about ln V)."""
    config = emergence_config.get_config("smoke")
    config.pretrain.steps = 40
    config.pretrain.lr = 1e-2
    docs = [{"path": f"d{i}.txt", "text": "abcdefgh" * 60} for i in range(4)]
    text = (training_rows.text_windows(docs, config.data.seq_len, 16),
            training_rows.text_windows(docs, config.data.seq_len, 4, offset=0.5))
    model = emergence.model_config(config, "s1")
    params, nll = emergence.pretrain(config, model_lib.build(model), text,
                                           jax.random.key(0))
    assert nll < 0.5 * np.log(model.vocab_size), nll
    assert jax.tree.leaves(params)


@pytest.mark.parametrize("override, message", [
    ({"size_order": ("s1",)}, "at least 2 model sizes"),
    ({"size_order": ("s1", "s9")}, "not in sizes"),
    ({"checkpoints": 3}, "divide steps"),
    ({"buckets": (6, 3)}, "increasing"),
])
def test_bad_configs_are_refused(override, message):
    config = emergence_config.get_config("smoke")
    config.update(override)
    with pytest.raises(cli.UserError, match=message):
        emergence.check(config)


def test_smoke_study_end_to_end_with_report_and_resume(tmp_path):
    workdir = tmp_path / "w"
    first = runs.run("experiments.emergence", workdir, "configs/emergence.py:smoke", timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    with open(workdir / "emergence.json") as f:
        study = json.load(f)
    config = emergence_config.get_config("smoke")
    assert [s["size"] for s in study["sizes"]] == ["s1", "s2"]
    assert study["pretrain_steps"] == config.pretrain.steps > 0
    for s in study["sizes"]:
        assert s["pretrain"]["steps"] == config.pretrain.steps
        assert 0.0 < s["pretrain"]["test_nll"] < 2 * np.log(260)
        assert [e["step"] for e in s["evals"]] == [2, 4]
        for e in s["evals"]:
            assert sum(b["count"] for b in e["buckets"]) == config.eval_rows
            for b in e["buckets"]:
                assert 0.0 <= b["exact_match"] <= b["per_token_accuracy"] + 1e-9
    md = (workdir / "report.md").read_text()
    assert "## Emergence and the metric" in md
    assert f"pre-trained from scratch for {config.pretrain.steps} steps" in md
    assert f"| {study['sizes'][0]['pretrain']['test_nll']:.3f} |" in md
    s2 = study["sizes"][1]["evals"][-1]["buckets"][0]
    assert (f"{s2['per_token_accuracy']:.3f} / {s2['exact_match']:.3f} / "
            f"{s2['predicted_exact_match']:.3f}") in md

    stamp = os.path.getmtime(workdir / "emergence" / "s1.json")
    second = runs.run("experiments.emergence", workdir, "configs/emergence.py:smoke",
                      timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert os.path.getmtime(workdir / "emergence" / "s1.json") == stamp
    with open(workdir / "emergence.json") as f:
        assert json.load(f)["sizes"] == study["sizes"]
    # Other settings are refused before anything trains (in process: a UserError is one line
    # and exit 2 at every entry point, tests/test_errors.py).
    changed = emergence_config.get_config("smoke")
    changed.lr = 0.01
    with pytest.raises(cli.UserError, match="other settings"):
        emergence.run(changed, str(workdir), log=lambda line: None)
    assert os.path.getmtime(workdir / "emergence" / "s1.json") == stamp


@pytest.fixture
def sigterm_received():
    """SIGTERM delivered to this process (through the jobs' handler); cleared afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    loop.StopSignal()
    os.kill(os.getpid(), signal.SIGTERM)
    yield
    loop._SIGTERM["received"] = False  # pylint: disable=protected-access
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_stops_a_study_between_runs_and_exits_cleanly(sigterm_received, tmp_path):
    with pytest.raises(cli.Preempted, match="stopped before size s1; re-run to resume"):
        emergence.run(emergence_config.get_config("smoke"), str(tmp_path))
    assert not (tmp_path / "emergence").exists() and not (tmp_path / "emergence.json").exists()

    # The entry points (cli.run) log it and exit EXIT_PREEMPTED: resumable, neither failed nor
    # finished (a scheduler requeues it, a sweep leaves the point undone).
    code = ("import os, signal\n"
            "from learned_loss.core import cli, loop\n"
            "loop.StopSignal()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "cli.run(lambda argv: loop.raise_if_stopped('the next run'))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=runs.ROOT, env=runs.env(1),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == cli.EXIT_PREEMPTED, done.stderr[-2000:]
    assert "SIGTERM received: stopped before the next run; re-run to resume" in done.stderr
