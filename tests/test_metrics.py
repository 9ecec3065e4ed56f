"""Tests for learned_loss.core.metrics: event files, JSONL, resume, ETA."""

import json
import math
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from learned_loss.core import metrics


# --- Event files --------------------------------------------------------------

def _write_events(logdir):
    with metrics.MetricWriter(logdir) as writer:
        writer.write(1, {"loss": 2.5, "lr": 1e-3})
        writer.write(2, {"loss": 1.25})
        writer.write(3_000_000_000, {"loss": -0.1})  # > int32.
    (name,) = os.listdir(logdir / "tensorboard")
    return logdir / "tensorboard" / name


def test_event_file_name_and_round_trip(tmp_path):
    path = _write_events(tmp_path)
    name = os.path.basename(path)
    prefix, stamp, rest = name[:20], name.split(".")[3], name.split(".")[-2:]
    assert prefix == "events.out.tfevents."
    assert stamp.isdigit() and rest[0] == str(os.getpid()) and rest[1].isdigit()
    expected = [(1, "loss", 2.5), (1, "lr", 1e-3), (2, "loss", 1.25),
                (3_000_000_000, "loss", -0.1)]
    got = metrics.read_tensorboard_scalars(path)
    assert [(s, t) for s, t, _ in got] == [(s, t) for s, t, _ in expected]
    np.testing.assert_array_equal(  # Stored as float32.
        np.float32([v for _, _, v in got]), np.float32([v for *_, v in expected]))
    assert metrics.read_tensorboard_scalars(path.parent) == got  # Folder form.


def test_reader_reads_tensorboardx_summary_writer(tmp_path):
    # An event file written by tensorboardX's own SummaryWriter reads back the same.
    from tensorboardX import SummaryWriter
    with SummaryWriter(str(tmp_path), purge_step=4) as writer:
        writer.add_scalar("loss", 0.75, 4)
        writer.add_scalar("lr", 0.5, 5)
    assert metrics.read_tensorboard_scalars(tmp_path) == [(4, "loss", 0.75), (5, "lr", 0.5)]
    events = metrics.read_events(tmp_path)
    assert [e.step for e in events if e.HasField("session_log")] == [4]


def test_first_record_is_file_version(tmp_path):
    first = metrics.read_events(_write_events(tmp_path))[0]
    assert first.file_version == "brain.Event:2"
    assert not first.summary.value


@pytest.mark.parametrize("offset", [3, 9, 20, -2])
def test_flipped_byte_is_detected(tmp_path, offset):
    # Offsets hit the first frame's length, its length CRC, its data, and the
    # last frame's data CRC.
    path = _write_events(tmp_path)
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="CRC mismatch"):
        metrics.read_records(path)


def test_torn_last_frame_is_ignored(tmp_path):
    path = _write_events(tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-5])
    assert [s for s, *_ in metrics.read_tensorboard_scalars(path)] == [1, 1, 2]


# --- MetricWriter -------------------------------------------------------------

def test_jsonl_written_and_read_back(tmp_path):
    with metrics.MetricWriter(tmp_path) as writer:
        writer.write(1, {"loss": jnp.float32(2.0), "acc": np.float64(0.25),
                         "lr": 3e-4, "tokens": 128})
        writer.write(2, {"loss": jnp.array(float("nan")), "grad": math.inf,
                         "neg": -math.inf})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == ('{"acc": 0.25, "loss": 2.0, "lr": 0.0003, '
                        '"step": 1, "tokens": 128.0}')
    assert json.loads(lines[1]) == {"grad": "inf", "loss": "nan", "neg": "-inf",
                                    "step": 2}
    records = metrics.read_metrics(tmp_path)
    assert records[0] == {"step": 1, "acc": 0.25, "loss": 2.0, "lr": 3e-4,
                          "tokens": 128.0}
    assert math.isnan(records[1]["loss"]) and records[1]["grad"] == math.inf
    assert records[1]["neg"] == -math.inf


def test_tensorboard_scalars_equal_jsonl(tmp_path):
    with metrics.MetricWriter(tmp_path) as writer:
        for step in range(1, 4):
            writer.write(step, {"loss": 1.0 / step, "lr": jnp.asarray(0.1 * step)})
    tb = metrics.read_tensorboard_scalars(tmp_path / "tensorboard")
    jsonl = [(r["step"], k, r[k]) for r in metrics.read_metrics(tmp_path)
             for k in ("loss", "lr")]
    assert [(s, t) for s, t, _ in tb] == [(s, t) for s, t, _ in jsonl]
    np.testing.assert_allclose([v for *_, v in tb], [v for *_, v in jsonl],
                               rtol=1e-7)


def test_write_rejects_bad_scalars(tmp_path):
    with metrics.MetricWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="not a scalar"):
            writer.write(1, {"x": np.zeros(3)})
        with pytest.raises(ValueError, match="reserved"):
            writer.write(1, {"step": 1.0})


def test_disabled_writer_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    with metrics.MetricWriter(workdir, enabled=False, resume_step=3) as writer:
        writer.write(1, {"loss": 1.0})
    assert not workdir.exists()


def _write_steps(workdir, steps):
    with metrics.MetricWriter(workdir) as writer:
        for step in steps:
            writer.write(step, {"loss": float(step)})


def test_truncate_after_keeps_steps_and_drops_partial_line(tmp_path):
    _write_steps(tmp_path, range(1, 11))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"loss": 11.0, "st')  # Killed mid-write.
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == list(range(1, 11))
    assert metrics.truncate_after(tmp_path, 6) == 6
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.endswith("}\n")
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == list(range(1, 7))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".metrics.")]


def test_resume_has_no_duplicated_or_missing_steps(tmp_path):
    _write_steps(tmp_path, range(1, 9))  # Checkpoint at 5, killed after 8.
    with metrics.MetricWriter(tmp_path, resume_step=5) as writer:
        for step in range(6, 11):
            writer.write(step, {"loss": float(step)})
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == list(range(1, 11))
    # The restarted event file starts with a purge marker at step 6.
    logdir = tmp_path / "tensorboard"
    assert len(os.listdir(logdir)) == 2
    purges = [e.step for e in metrics.read_events(logdir) if e.HasField("session_log")]
    assert purges == [6]
    tb_steps = [s for s, *_ in metrics.read_tensorboard_scalars(logdir)]
    assert tb_steps == list(range(1, 9)) + list(range(6, 11))  # Raw, unpurged.


def test_reopening_without_resume_repairs_a_torn_line(tmp_path):
    _write_steps(tmp_path, [1, 2])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"loss": 3.0, "st')
    _write_steps(tmp_path, [3])
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3]


def test_truncate_rejects_corrupt_middle_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="bad metrics line"):
        metrics.truncate_after(tmp_path, 5)


def test_truncate_without_file_is_noop(tmp_path):
    assert metrics.truncate_after(tmp_path, 3) == 0
    assert not (tmp_path / "metrics.jsonl").exists()


def test_survives_sigkill(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from learned_loss.core import metrics
        writer = metrics.MetricWriter({str(tmp_path)!r})
        for step in range(1, 4):
            writer.write(step, {{"loss": float(step)}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script], cwd=root,
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3]
    tb = metrics.read_tensorboard_scalars(tmp_path / "tensorboard")
    assert tb == [(1, "loss", 1.0), (2, "loss", 2.0), (3, "loss", 3.0)]


# --- Progress -----------------------------------------------------------------

@pytest.mark.parametrize("seconds, expected", [
    (0, "0s"), (59.4, "59s"), (59.6, "1m00s"), (61, "1m01s"),
    (3599, "59m59s"), (3600, "1h00m00s"), (3723, "1h02m03s"),
    (90_000, "25h00m00s"), (-4, "0s"), (math.inf, "?"), (math.nan, "?"),
])
def test_format_duration(seconds, expected):
    assert metrics.format_duration(seconds) == expected


class FakeClock:

    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_progress_eta_excludes_compile_step():
    # Step 1 ends at t=100 (mostly compilation); 10 more steps take 2 s.
    progress = metrics.Progress(1000, clock=FakeClock([100.0, 102.0, 112.0]),
                                log=False)
    line = progress.update(1, tokens_seen=512)
    assert line == "step 1/1000 (0.1%) | ETA ?"
    line = progress.update(11, tokens_seen=11 * 512)
    assert progress.steps_per_sec == 5.0
    assert progress.tokens_per_sec == 2560.0
    assert progress.eta_seconds == pytest.approx(989 / 5)  # 197.8 s.
    assert line == "step 11/1000 (1.1%) | 5.00 steps/s | 2.56k tokens/s | ETA 3m18s"
    progress.update(61)  # 60 steps in 12 s; tokens not given this time.
    assert progress.steps_per_sec == 5.0
    assert progress.eta_seconds == pytest.approx(939 / 5)


def test_progress_after_resume_ignores_start_step_update():
    progress = metrics.Progress(5000, start_step=4000, log=False,
                                clock=FakeClock([0.0, 30.0, 40.0]))
    progress.update(4000)  # Logged right after restoring: not a timing point.
    progress.update(4001)  # Includes compilation.
    line = progress.update(4101)
    assert progress.steps_per_sec == 10.0
    assert line == "step 4101/5000 (82.0%) | 10.00 steps/s | ETA 1m30s"
