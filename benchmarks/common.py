"""What the benchmarks share: the machine's load, interleaved rounds, and the random parameters
that make greedy decoding depend on the model.

Nothing here imports jax, nor torch until `peer_module` is called, so that every benchmark runs
without the PyTorch peer.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

BUSY_NOTE = ("other processes were using the CPUs: the throughputs are lower than on an idle "
             "machine and the ratios noisier. Rerun on an idle machine.")


class MachineLoad:
    """The share of all CPUs that other processes used since construction (Linux /proc/stat)."""

    def __init__(self):
        self.start = (self._busy_seconds(), time.perf_counter(), self._own_seconds())

    @staticmethod
    def _busy_seconds():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_seconds():
        t = os.times()
        return t.user + t.system

    def others_share(self):
        busy0, wall0, own0 = self.start
        busy1 = self._busy_seconds()
        if busy0 is None or busy1 is None:
            return None
        wall = time.perf_counter() - wall0
        others = (busy1 - busy0) - (self._own_seconds() - own0)
        return max(0.0, others / (wall * os.cpu_count()))

    def report(self, note: str = "", busy_note: str = BUSY_NOTE) -> list[str]:
        """The machine lines of a benchmark's printout: CPUs, other processes' share and `note`,
        then `busy_note` when other processes took more than a tenth of the CPUs."""
        others = self.others_share()
        others_text = "unknown" if others is None else f"{100 * others:.0f}%"
        lines = [f"  machine: {os.cpu_count()} CPUs; other processes used {others_text} of them "
                 f"during the run{'; ' + note if note else ''}"]
        if (others or 0.0) > 0.1:
            lines.append(f"  NOTE: {busy_note}")
        return lines


def round_order(runners: list, i: int) -> list:
    """Round i's order: the runners rotated by i, so that each runs first, second, ... in turn
    (a runner that follows another one's threads pays for their wind-down equally often)."""
    shift = i % len(runners)
    return runners[shift:] + runners[:shift]


def spread(values: list[float]) -> dict:
    """{'median', 'min', 'max'} of per-round figures."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratios(ours: list[float], theirs: list[float]) -> dict:
    """Per-round throughput ratios ours / theirs, summarised by `spread`."""
    return spread([a / b for a, b in zip(ours, theirs)])


def random_params(shapes: dict, seed: int) -> dict:
    """Haiku params of the given shapes ({module: {name: array or ShapeDtypeStruct}}) drawn at a
    scale where the model's outputs depend on every part of it: weights N(0, 1 / shape[0]),
    norm scales 1 + N(0, 0.1^2), offsets and biases N(0, 0.1^2). At the init scale attention is
    close to uniform and greedy decoding repeats one token, which would hide a wrong model."""
    rng = np.random.default_rng(seed)
    out = {}
    for module, leaves in shapes.items():
        out[module] = {}
        for name, leaf in leaves.items():
            shape = tuple(leaf.shape)
            noise = rng.standard_normal(shape)
            if name == "scale":
                value = 1.0 + 0.1 * noise
            elif len(shape) == 1:
                value = 0.1 * noise
            else:
                value = noise / np.sqrt(shape[0])
            out[module][name] = value.astype(np.float32)
    return out


def add_peer_flags(parser) -> None:
    """The flags every benchmark with the PyTorch peer takes (and --json)."""
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="time the PyTorch peer eagerly only")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                        help="torch.set_num_threads; default os.cpu_count(), as many as XLA's")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")


def peer_module():
    """(benchmarks.torch_peer, None), or (None, why) when torch is not importable; imported
    here, on demand, so that this module needs no torch."""
    try:
        from benchmarks import torch_peer  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        return None, f"torch is not importable ({e}); `pip install -e '.[bench]'` installs it"
    return torch_peer, None


def first_calls(timed: list, peer) -> tuple[dict, str | None]:
    """Each timed thing's first call (`.run(1)`, which compiles), by `.label`. A
    "torch.compile" one whose first call fails is dropped from `timed`, with its one line why
    printed and returned (`peer.try_compile`). Returns ({label: seconds}, why or None)."""
    first, compile_error = {}, None
    for t in list(timed):
        if t.label == "torch.compile":
            first[t.label], compile_error = peer.try_compile("torch.compile", lambda: t.run(1))
            if compile_error:
                timed.remove(t)
                print(compile_error)
        else:
            first[t.label] = t.run(1)
    return first, compile_error
