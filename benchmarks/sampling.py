"""Throughput of greedy generation with a KV cache on the CPU: ours against the same model in
PyTorch.

  .venv/bin/python benchmarks/sampling.py            # the labelled block of figures
  .venv/bin/python benchmarks/sampling.py --json     # ... and one JSON line at the end

Everything is measured in one process, on the `bench` model (configs/models.py: D=256, L=4, H=4,
F=1024), a batch of 64 prompts of 32 random byte tokens, 32 new tokens each, greedy:
  1. new tokens/s of ours: `learned_loss.core.sampling.generate` (one jitted program: the prefill,
     then a while loop of decode steps over the cache; eos_id=-1, so every row runs all 32 steps);
  2. its compile time (trace + lower + backend compile, from `jax.monitoring` events of the first
     call), the first call's wall time minus a steady-state generation, and how many programs
     compiled (one is right);
  3. ours over the PyTorch peer (`benchmarks/torch_peer.py`, eager, under torch.inference_mode):
     the prompts prefilled into preallocated [B, H, S, K] caches, then one token at a time, argmax
     in between;
  4. ours over the same under torch.compile (left out, with one line why, where it fails).
A timed block runs `--calls` whole generations (the prefill included) and new tokens/s counts the
64 x 32 new tokens of each; ratios are taken per round (every generator once per round, the order
rotated), then the median. torch runs on as many threads as XLA's CPU client (os.cpu_count()).

Both sides hold the same parameters: random ones at a scale where attention and positions matter
(`common.random_params`; at the init scale greedy decoding repeats one token), copied into the
PyTorch module. Before timing, the script checks that they pick the same greedy tokens: a
near-tie between two logits can flip one token and with it the rest of its row, so it reports
the fraction of equal tokens and refuses (one line, exit status 1) below 0.95, which would mean
the two models differ.

Both decode paths score every query against the whole cache under a mask (static shapes), so they
do the same work. The machine is assumed noisy: read the spread, not just the median; the script
prints the CPU share other processes took during the run. torch's OpenMP threads meet at a barrier
after every op, so a shared CPU slows the PyTorch peer most: with other processes using both
cores, its eager decode step (batch 64) took 89 ms on 2 threads and 19 ms on 1 (`--torch-threads
1`), with LayerNorm and GELU calls of a few microseconds' work taking ~9 ms each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from learned_loss.core import timing  # noqa: E402
from configs import models  # noqa: E402
from learned_loss.core import model as model_lib  # noqa: E402
from learned_loss.core import sampling  # noqa: E402

BATCH = 64
PROMPT_LEN = 32
NEW_TOKENS = 32
MIN_AGREEMENT = 0.95  # The fraction of greedy tokens the PyTorch peer must share with ours.
NO_EOS = -1  # An eos_id no token equals: every row runs all NEW_TOKENS steps.


class Generator:
    """One generator (a function of no arguments returning [B, N] tokens) and its timed blocks."""

    def __init__(self, label, generate):
        self.label, self.generate = label, generate
        self.block_seconds = []
        self.tokens = None  # The first generation's tokens, as numpy.

    def run(self, n):
        with timing.stage(self.label):
            start = time.perf_counter()
            out = None
            for _ in range(n):
                out = self.generate()
            out = jax.block_until_ready(out)  # The PyTorch peer returns when done.
            seconds = time.perf_counter() - start
        if self.tokens is None and out is not None:
            self.tokens = np.asarray(out)
        return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2, help="generations per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed generations after the first")
    common.add_peer_flags(parser)
    args = parser.parse_args(argv)
    machine = common.MachineLoad()
    threads = args.torch_threads

    cfg = model_lib.ModelConfig.from_config(
        models.model_config("bench", max_len=PROMPT_LEN + NEW_TOKENS))
    model = model_lib.build(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    params = common.random_params(shapes, seed=0)
    prompts = np.random.default_rng(0).integers(0, 256, size=(BATCH, PROMPT_LEN)).astype(np.int32)
    lengths = np.full((BATCH,), PROMPT_LEN, np.int32)

    on_device = jax.device_put((params, prompts, lengths))
    generators = [Generator("ours", lambda: sampling.generate(
        model, *on_device, None, max_new_tokens=NEW_TOKENS, eos_id=NO_EOS).tokens)]

    peer, peer_skipped = (None, "--no-torch") if args.no_torch else common.peer_module()
    if peer is not None:
        peer.set_threads(threads)
        module = peer.from_haiku(cfg, params)
        torch_prompts = peer.torch.from_numpy(prompts).long()
        for label, compiled in (("torch eager", False), ("torch.compile", True)):
            if not (compiled and args.no_torch_compile):
                greedy = peer.Greedy(module, compile=compiled)
                generators.append(Generator(label, lambda g=greedy: g(torch_prompts, NEW_TOKENS)))

    # First calls: compile (timed), then warm up. torch.compile is left out, with one line why,
    # when its first call fails.
    first, compile_error = common.first_calls(generators, peer)
    agreement = {g.label: float(np.mean(g.tokens == generators[0].tokens)) for g in generators[1:]}
    for label, share in agreement.items():
        if not share >= MIN_AGREEMENT:
            sys.exit(f"sampling: the PyTorch peer ({label}) is not our model: {share:.3f} of its "
                     f"greedy tokens equal ours (< {MIN_AGREEMENT})")
    for g in generators:
        g.run(args.warmup)

    for i in range(args.repeats):
        for g in common.round_order(generators, i):
            g.block_seconds.append(g.run(args.calls))

    tokens_per_block = args.calls * BATCH * NEW_TOKENS
    tps = {g.label: [tokens_per_block / s for s in g.block_seconds] for g in generators}
    ours = common.spread(tps["ours"])
    generation_s = statistics.median(generators[0].block_seconds) / args.calls
    ours_row = timing.stage_row("ours")
    compile_phases = {p: ours_row[f"{p}_s"] for p in ("trace", "lower", "backend")}
    figures = {
        "model": "bench", "batch": BATCH, "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS,
        "device": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__, "calls_per_block": args.calls, "blocks": args.repeats,
        "cpu_count": os.cpu_count(),
        "new_tokens_per_s": ours["median"],
        "new_tokens_per_s_range": [ours["min"], ours["max"]],
        "generation_ms": 1e3 * generation_s,
        "distinct_tokens": int(len(np.unique(generators[0].tokens))),
        "compile_s": sum(compile_phases.values()),
        "compile_phases_s": compile_phases,
        "first_call_minus_generation_s": first["ours"] - generation_s,
        "compilations": ours_row["programs"],
        "torch": None if peer is None else peer.torch.__version__,
        "torch_skipped": peer_skipped,
    }
    if peer is not None:
        figures.update(torch_cuda=peer.torch.version.cuda, torch_threads=threads,
                       torch_compile_error=compile_error)
    peer_figures = {}
    for g in generators[1:]:
        key = g.label.replace(" ", "_").replace(".", "_")  # torch_eager, torch_compile
        theirs, rounds = common.spread(tps[g.label]), common.ratios(tps["ours"], tps[g.label])
        peer_figures[g.label] = (theirs, rounds)
        figures.update({
            f"{key}_new_tokens_per_s": theirs["median"],
            f"{key}_new_tokens_per_s_range": [theirs["min"], theirs["max"]],
            f"{key}_first_call_s": first[g.label],
            f"{key}_equal_tokens": agreement[g.label],
            f"ratio_to_{key}": rounds["median"],
            f"ratio_to_{key}_range": [rounds["min"], rounds["max"]],
        })
    f = figures
    timed = ", ".join(g.label for g in generators)
    print(f"sampling benchmark: model=bench (D=256 L=4 H=4 F=1024), greedy with a KV cache, "
          f"batch {BATCH}, prompts of {PROMPT_LEN} tokens + {NEW_TOKENS} new, {f['device']}, "
          f"jax {f['jax']}, XLA_FLAGS={f['xla_flags'] or '(none)'}")
    print(f"  blocks of {args.calls} generations, median of {args.repeats} rounds; " + (
        f"{timed} timed in turns, the order rotated per round" if len(generators) > 1 else
        "ours alone"))
    if peer is not None:
        equal = ", ".join(f"{label} {share:.3f}" for label, share in agreement.items())
        print(f"  PyTorch peer: {peer.version_line(threads)}; "
              f"greedy tokens equal to ours: {equal} "
              f"({f['distinct_tokens']} distinct tokens)")
    print(f"  1. new tokens/s (ours)        {ours['median']:10.0f}   (blocks {ours['min']:.0f}.."
          f"{ours['max']:.0f}; {f['generation_ms']:.0f} ms per generation, prefill included)")
    print(f"  2. compile time (ours)        {f['compile_s']:10.2f} s   (trace "
          f"{compile_phases.get('trace', 0):.2f} + lower {compile_phases.get('lower', 0):.2f} + "
          f"backend {compile_phases.get('backend', 0):.2f}; first call - generation = "
          f"{f['first_call_minus_generation_s']:.2f} s; {f['compilations']} compilation(s))")
    for n, label in ((3, "torch eager"), (4, "torch.compile")):
        name = f"{n}. ours / {label}".ljust(30)
        if label in peer_figures:
            theirs, r = peer_figures[label]
            print(f"  {name}{r['median']:10.3f}     (rounds {r['min']:.3f}..{r['max']:.3f}; "
                  f"{label} {theirs['median']:.0f} new tokens/s, blocks {theirs['min']:.0f}.."
                  f"{theirs['max']:.0f}; first call {first[label]:.1f} s)")
        else:
            why = peer_skipped or ("--no-torch-compile" if args.no_torch_compile
                                   else compile_error)
            print(f"  {name}{'-':>10}     (not timed: {why})")
    figures["other_processes_cpu_share"] = machine.others_share()
    for line in machine.report():
        print(line)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
