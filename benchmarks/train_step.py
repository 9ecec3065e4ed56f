"""Throughput of the pre-training step on one CPU device: tokens/s, MFU, compile time.

  .venv/bin/python benchmarks/train_step.py            # the labelled block of figures
  .venv/bin/python benchmarks/train_step.py --json     # ... and one JSON line at the end

Everything is measured in one process, on the `bench` model (configs/models.py: D=256, L=4, H=4,
F=1024) with T=256 and a global batch of 16:
  1. tokens/s of our step: the real code path (`train.create_sharded_state` and
     `train.compile_steps` on a 1-device `data` mesh, the MLE objective, `train.make_optimizer`
     on the `tiny` pre-training optimizer, batches placed with `sharding.shard_batch`);
  2. model FLOP/s = `model.flops_per_token` x tokens/s;
  3. the float32 FLOP/s of a 2048 x 2048 `jnp.dot` (`perf.matmul_flops_per_second`);
  4. MFU = 2 / 3, taken per round (the peak is measured again before each round), then the median;
  5. the step's compile time (trace + lower + backend compile, from `jax.monitoring` events of the
     first call), and the first call's wall time minus a steady-state step;
  6. how many times the step compiled (backend compiles seen while inside the step, and the jitted
     function's cache size): one is right, more means a retrace per call;
  7. our step's throughput over that of a minimal haiku + optax step of the same model (the same
     `model.Transformer`, `optax.adamw`, cross-entropy, `jax.jit(donate_argnums=0)`, no sharding,
     no clipping, no metrics). Ours and the minimal step are timed in turns (A B A B ...).

Timed blocks run `--steps` steps each and block on the returned state; figures are medians over
`--repeats` rounds. The machine is assumed noisy: read the spread, not just the median. Under load
from other processes MFU reads high (the large matmul loses more to a shared CPU than the step
does), so the script prints the CPU share other processes took during the run and flags a busy
machine.

XLA flags are the user's: this script sets none. On this stack (jax 0.10, 2-core AMD EPYC) none of
`--xla_cpu_use_thunk_runtime=false`, `--xla_cpu_experimental_ynn_fusion_type=` (YNNPACK fusions
off), `--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce`,
`--xla_cpu_enable_concurrency_optimized_scheduler=true` or `--xla_cpu_multi_thread_eigen=false`
made the step faster; turning YNNPACK fusions off made it ~8% slower.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import haiku as hk  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import models, pretrain  # noqa: E402
from learned_loss.core import model as model_lib  # noqa: E402
from learned_loss import objectives  # noqa: E402
from learned_loss.core import perf, sharding, train  # noqa: E402

SEQ_LEN = 256
BATCH = 16
NUM_POOL = 4  # Distinct random batches, cycled through, placed before timing.

# ---------------------------------------------------------------------------------------------
# Compile accounting with jax.monitoring: events are attributed to the step only while inside it.

_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "backend",
}


class _CompileLog:
    def __init__(self):
        self.label = None  # Which function the events belong to, while inside it.
        self.backend_compiles = {}  # label -> count
        self.seconds = {}  # label -> {phase: seconds}

    def listener(self, event, duration, **_):
        phase = _COMPILE_EVENTS.get(event)
        if phase is None or self.label is None:
            return
        if phase == "backend":
            self.backend_compiles[self.label] = self.backend_compiles.get(self.label, 0) + 1
        bucket = self.seconds.setdefault(self.label, {})
        bucket[phase] = bucket.get(phase, 0.0) + duration

    @contextlib.contextmanager
    def inside(self, label):
        previous, self.label = self.label, label
        try:
            yield
        finally:
            self.label = previous


LOG = _CompileLog()
jax.monitoring.register_event_duration_secs_listener(LOG.listener)


class _MachineLoad:
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


# ---------------------------------------------------------------------------------------------
# The two steps.


def _random_batches(vocab_size, rng):
    """NUM_POOL host batches {'inputs', 'targets'} of [BATCH, SEQ_LEN] int32 random bytes."""
    out = []
    for _ in range(NUM_POOL):
        tokens = rng.integers(0, min(256, vocab_size), size=(BATCH, SEQ_LEN + 1)).astype(np.int32)
        out.append({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
    return out


def ours(cfg, host_batches, num_steps):
    """Our step: the real sharded code path on a 1-device mesh. Returns (step, state, batches)."""
    model = model_lib.build(cfg)
    optimizer = train.make_optimizer(pretrain.get_config("tiny").optimizer, num_steps)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    state, state_sh = train.create_sharded_state(
        model, optimizer, jax.random.key(0), SEQ_LEN, models.PARTITION_RULES, mesh)
    step_fn, _ = train.compile_steps(model, optimizer, objectives.build("mle"), state_sh, mesh)
    batches = [sharding.shard_batch(b, mesh) for b in host_batches]

    def step(state, batch):
        return step_fn(state, batch, ())

    return step_fn, step, state, batches


def minimal(cfg, host_batches):
    """A minimal haiku + optax step of the same model: adamw, cross-entropy, donated state."""
    net = hk.without_apply_rng(hk.transform(lambda t: model_lib.Transformer(cfg)(t).logits))
    optimizer = optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.1)

    def loss_fn(params, batch):
        logits = net.apply(params, batch["inputs"])  # [B, T, V]
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

    def step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    params = net.init(jax.random.key(0), jnp.zeros((1, SEQ_LEN), jnp.int32))
    state = (params, optimizer.init(params))
    step_fn = jax.jit(step, donate_argnums=0)
    batches = [jax.device_put(b) for b in host_batches]
    return step_fn, step_fn, state, batches


class Runner:
    """Holds one step's live state and times blocks of steps."""

    def __init__(self, label, step, state, batches):
        self.label, self.step, self.state, self.batches = label, step, state, batches
        self.calls = 0
        self.block_seconds = []

    def run(self, n):
        with LOG.inside(self.label):
            start = time.perf_counter()
            for _ in range(n):
                self.state, _ = self.step(self.state, self.batches[self.calls % NUM_POOL])
                self.calls += 1
            jax.block_until_ready(self.state)
            return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (matmul peak, ours, minimal)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)
    machine = _MachineLoad()

    cfg = model_lib.ModelConfig.from_config(models.model_config("bench", max_len=SEQ_LEN))
    host_batches = _random_batches(cfg.vocab_size, np.random.default_rng(0))
    total_steps = 1 + args.warmup + args.steps * args.repeats

    our_jit, our_step, our_state, our_batches = ours(cfg, host_batches, total_steps)
    _, min_step, min_state, min_batches = minimal(cfg, host_batches)
    a = Runner("ours", our_step, our_state, our_batches)
    b = Runner("minimal", min_step, min_state, min_batches)

    # First calls: compile (timed), then warm up both.
    first = {r.label: r.run(1) for r in (a, b)}
    for r in (a, b):
        r.run(args.warmup)

    # Interleaved rounds: the matmul peak, then A B (or B A), so that every round sees the same
    # machine load; MFU and the ours/minimal ratio are taken per round, then the median.
    peaks = []
    for i in range(args.repeats):
        peaks.append(perf.matmul_flops_per_second(2048))
        for r in ((a, b) if i % 2 == 0 else (b, a)):
            r.block_seconds.append(r.run(args.steps))

    tokens_per_block = args.steps * BATCH * SEQ_LEN
    tps = {r.label: [tokens_per_block / s for s in r.block_seconds] for r in (a, b)}
    step_s = {r.label: statistics.median(r.block_seconds) / args.steps for r in (a, b)}
    flops_per_token = model_lib.flops_per_token(cfg, SEQ_LEN)
    peak = statistics.median(peaks)
    our_tps = statistics.median(tps["ours"])
    min_tps = statistics.median(tps["minimal"])
    ratios = [x / y for x, y in zip(tps["ours"], tps["minimal"])]  # Per round.
    mfus = [flops_per_token * x / p for x, p in zip(tps["ours"], peaks)]
    min_mfus = [flops_per_token * x / p for x, p in zip(tps["minimal"], peaks)]
    compile_phases = LOG.seconds.get("ours", {})

    figures = {
        "model": "bench", "seq_len": SEQ_LEN, "global_batch": BATCH,
        "device": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__, "steps_per_block": args.steps, "blocks": args.repeats,
        "cpu_count": os.cpu_count(), "other_processes_cpu_share": machine.others_share(),
        "tokens_per_s": our_tps,
        "tokens_per_s_min": min(tps["ours"]), "tokens_per_s_max": max(tps["ours"]),
        "step_ms": 1e3 * step_s["ours"],
        "flops_per_token": flops_per_token,
        "model_flops_per_s": flops_per_token * our_tps,
        "matmul_flops_per_s": peak, "matmul_flops_per_s_all": peaks,
        "mfu": statistics.median(mfus), "mfu_range": [min(mfus), max(mfus)],
        "compile_s": sum(compile_phases.values()),
        "compile_phases_s": compile_phases,
        "first_call_minus_step_s": first["ours"] - step_s["ours"],
        "compilations": LOG.backend_compiles.get("ours", 0),
        "jit_cache_size": our_jit._cache_size(),
        "minimal_tokens_per_s": min_tps,
        "minimal_mfu": statistics.median(min_mfus),
        "minimal_compilations": LOG.backend_compiles.get("minimal", 0),
        "ratio_to_minimal": statistics.median(ratios),
        "ratio_to_minimal_range": [min(ratios), max(ratios)],
    }
    f = figures
    print(f"train_step benchmark: model=bench (D=256 L=4 H=4 F=1024) T={SEQ_LEN} B={BATCH}, "
          f"{f['device']}, jax {f['jax']}, XLA_FLAGS={f['xla_flags'] or '(none)'}")
    print(f"  blocks of {args.steps} steps, median of {args.repeats}, ours and minimal interleaved")
    print(f"  1. tokens/s (ours)            {our_tps:10.0f}   "
          f"(blocks {min(tps['ours']):.0f}..{max(tps['ours']):.0f}; {f['step_ms']:.1f} ms/step)")
    print(f"  2. model FLOP/s               {f['model_flops_per_s'] / 1e9:10.2f} G   "
          f"({flops_per_token / 1e6:.2f} MFLOP/token)")
    print(f"  3. matmul FLOP/s (2048 f32)   {peak / 1e9:10.2f} G   "
          f"(rounds {min(peaks) / 1e9:.1f}..{max(peaks) / 1e9:.1f})")
    print(f"  4. MFU                        {f['mfu']:10.3f}     "
          f"(rounds {min(mfus):.3f}..{max(mfus):.3f}; minimal step {f['minimal_mfu']:.3f})")
    print(f"  5. compile time               {f['compile_s']:10.2f} s   (trace "
          f"{compile_phases.get('trace', 0):.2f} + lower {compile_phases.get('lower', 0):.2f} + "
          f"backend {compile_phases.get('backend', 0):.2f}; first call - step = "
          f"{f['first_call_minus_step_s']:.2f} s)")
    print(f"  6. compilations of the step   {f['compilations']:10d}     "
          f"(jit cache size {f['jit_cache_size']}; minimal step {f['minimal_compilations']})")
    print(f"  7. ours / minimal step        {f['ratio_to_minimal']:10.3f}     "
          f"(rounds {f['ratio_to_minimal_range'][0]:.3f}..{f['ratio_to_minimal_range'][1]:.3f}; "
          f"minimal {min_tps:.0f} tokens/s)")
    spread = max(peaks) / min(peaks)
    others = f["other_processes_cpu_share"]
    others_text = "unknown" if others is None else f"{100 * others:.0f}%"
    print(f"  machine: {os.cpu_count()} CPUs; other processes used {others_text} of them during "
          f"the run; the matmul peak varied x{spread:.2f} across rounds")
    if (others or 0.0) > 0.1:
        print("  NOTE: other processes were using the CPUs; a shared CPU slows the 2048 matmul more "
              "than the step, so MFU reads high under load. Rerun on an idle machine.")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
