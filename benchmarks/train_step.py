"""The pre-training step on one CPU device: tokens/s, MFU, compile time, and against PyTorch.

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
     no clipping, no metrics);
  8. our step's throughput over that of the same model in PyTorch, eager
     (`benchmarks/torch_peer.py`: nn.Module, nn.LayerNorm, F.scaled_dot_product_attention with
     is_causal=True, the same rotary positions and tied embeddings, tanh GELU, F.cross_entropy,
     torch.optim.AdamW with betas (0.9, 0.95), weight decay 0.1 and the minimal step's learning
     rate), on torch.set_num_threads(os.cpu_count()) threads, as many as XLA's CPU client runs;
  9. the same over the PyTorch step with its forward and loss under torch.compile (inductor; left
     out, with one line why, where compiling fails), and its first call (the compile) in seconds.
The PyTorch peer starts from a copy of our initial params; the script refuses (one line, exit
status 1) unless its first loss on the first batch is ours to a relative 1e-4, and so is its loss
on params at a scale where attention and positions matter (`common.random_params`; at the init
scale a peer without rotary positions passes the first check). `--no-torch`
skips it (it is skipped, with a line why, where torch is not installed: `make bench` installs the
`bench` extra). All steps are timed in turns, the order rotated per round (A B C D, B C D A, ...).

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

torch's OpenMP threads meet at a barrier after every op, so a CPU shared with other processes
slows the PyTorch peer more than ours: with other processes using both cores, its eager step took
3.1 s on 2 threads and 1.2 s on 1 (`--torch-threads 1`); ours took about 1.4 s.
"""

from __future__ import annotations

import argparse
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

from benchmarks import common  # noqa: E402
from learned_loss.core import timing  # noqa: E402
from configs import models, pretrain  # noqa: E402
from learned_loss.core import model as model_lib  # noqa: E402
from learned_loss import objectives  # noqa: E402
from learned_loss.core import perf, sharding, train  # noqa: E402

SEQ_LEN = 256
BATCH = 16
NUM_POOL = 4  # Distinct random batches, cycled through, placed before timing.
LR = 1e-3  # The minimal step's and the PyTorch peer's learning rate.
LOSS_RTOL = 1e-4  # How far the PyTorch peer's first loss may lie from ours.


# ---------------------------------------------------------------------------------------------
# The steps.


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
    optimizer = optax.adamw(LR, b1=0.9, b2=0.95, weight_decay=0.1)

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


def torch_steps(torch_peer, cfg, params, host_batches, compile_too):
    """The PyTorch peer's steps (`benchmarks.torch_peer.TrainStep`) on copies of `params`, as
    {label: (step, state, batches)} for Runners: eager, and under torch.compile when
    `compile_too` (its first call compiles)."""
    torch = torch_peer.torch
    batches = [(torch.from_numpy(b["inputs"]).long(), torch.from_numpy(b["targets"]).long())
               for b in host_batches]
    out = {}
    for label, compiled in (("torch eager", False), ("torch.compile", True)):
        if compiled and not compile_too:
            continue
        train_step = torch_peer.TrainStep(torch_peer.from_haiku(cfg, params), LR, compiled)
        out[label] = (lambda state, batch, f=train_step: (state, f(*batch)), None, batches)
    return out


def model_check(torch_peer, cfg, host_batch):
    """(ours, the PyTorch peer's) mean cross-entropy on `host_batch` with params at a scale where
    attention and positions matter (`common.random_params`): at the init scale attention is
    near uniform, and a peer without rotary positions gives the same first loss to 1e-6."""
    model = model_lib.build(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    params = common.random_params(shapes, seed=0)

    @jax.jit
    def loss(params, batch):
        logits = model.apply(params, batch["inputs"]).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

    torch = torch_peer.torch
    with torch.inference_mode():
        theirs = torch_peer.mean_loss(torch_peer.from_haiku(cfg, params),
                                      torch.from_numpy(host_batch["inputs"]).long(),
                                      torch.from_numpy(host_batch["targets"]).long())
    return float(loss(params, host_batch)), float(theirs)


class Runner:
    """Holds one step's live state and times blocks of steps; `first` is the first call's
    output (the loss, or the metrics that hold it)."""

    def __init__(self, label, step, state, batches):
        self.label, self.step, self.state, self.batches = label, step, state, batches
        self.calls = 0
        self.block_seconds = []
        self.first = None

    def run(self, n):
        with timing.stage(self.label):
            start = time.perf_counter()
            for _ in range(n):
                self.state, out = self.step(self.state, self.batches[self.calls % NUM_POOL])
                if self.first is None:
                    self.first = out
                self.calls += 1
            jax.block_until_ready(self.state)  # The PyTorch peer's steps return when done.
            return time.perf_counter() - start

    def first_loss(self):
        out = self.first["loss"] if isinstance(self.first, dict) else self.first
        return float(np.asarray(out))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed rounds (matmul peak, then every step in turn)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    common.add_peer_flags(parser)
    args = parser.parse_args(argv)
    machine = common.MachineLoad()
    threads = args.torch_threads

    cfg = model_lib.ModelConfig.from_config(models.model_config("bench", max_len=SEQ_LEN))
    host_batches = _random_batches(cfg.vocab_size, np.random.default_rng(0))
    total_steps = 1 + args.warmup + args.steps * args.repeats

    our_jit, our_step, our_state, our_batches = ours(cfg, host_batches, total_steps)
    initial_params = jax.device_get(our_state.params)  # Before the first step donates them.
    _, min_step, min_state, min_batches = minimal(cfg, host_batches)
    a = Runner("ours", our_step, our_state, our_batches)
    b = Runner("minimal", min_step, min_state, min_batches)
    runners = [a, b]

    peer, peer_skipped = (None, "--no-torch") if args.no_torch else common.peer_module()
    if peer is not None:
        peer.set_threads(threads)
        steps = torch_steps(peer, cfg, initial_params, host_batches, not args.no_torch_compile)
        runners += [Runner(label, *steps[label]) for label in steps]

    # First calls: compile (timed), then warm up every step. torch.compile is left out, with one
    # line why, when its first call fails.
    first, compile_error = common.first_calls(runners, peer)
    our_loss = a.first_loss()
    losses = {f"{r.label}'s first loss": (our_loss, r.first_loss()) for r in runners[2:]}
    if peer is not None:
        losses["its loss on spread params"] = model_check(peer, cfg, host_batches[0])
    for what, (x, y) in losses.items():
        if not abs(y - x) <= LOSS_RTOL * abs(x):
            sys.exit(f"train_step: the PyTorch peer is not our model: {what} is {y:.6f}, ours "
                     f"{x:.6f} (relative difference {abs(y - x) / abs(x):.1e} > {LOSS_RTOL:.0e})")
    for r in runners:
        r.run(args.warmup)

    # Interleaved rounds: the matmul peak, then every step in an order rotated per round, so that
    # every round sees the same machine load; MFU and the ratios are taken per round, then the
    # median.
    peaks = []
    for i in range(args.repeats):
        peaks.append(perf.matmul_flops_per_second(2048))
        for r in common.round_order(runners, i):
            r.block_seconds.append(r.run(args.steps))

    tokens_per_block = args.steps * BATCH * SEQ_LEN
    tps = {r.label: [tokens_per_block / s for s in r.block_seconds] for r in runners}
    step_s = {r.label: statistics.median(r.block_seconds) / args.steps for r in (a, b)}
    flops_per_token = model_lib.flops_per_token(cfg, SEQ_LEN)
    peak = statistics.median(peaks)
    our_tps = statistics.median(tps["ours"])
    min_tps = statistics.median(tps["minimal"])
    ratios = [x / y for x, y in zip(tps["ours"], tps["minimal"])]  # Per round.
    mfus = [flops_per_token * x / p for x, p in zip(tps["ours"], peaks)]
    min_mfus = [flops_per_token * x / p for x, p in zip(tps["minimal"], peaks)]
    ours_row = timing.stage_row("ours")
    compile_phases = {p: ours_row[f"{p}_s"] for p in ("trace", "lower", "backend")}

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
        "compilations": ours_row["programs"],
        "jit_cache_size": our_jit._cache_size(),
        "minimal_tokens_per_s": min_tps,
        "minimal_mfu": statistics.median(min_mfus),
        "minimal_compilations": timing.stage_row("minimal")["programs"],
        "ratio_to_minimal": statistics.median(ratios),
        "ratio_to_minimal_range": [min(ratios), max(ratios)],
        "first_loss": our_loss,
        "torch": None if peer is None else peer.torch.__version__,
        "torch_skipped": peer_skipped,
    }
    peer_figures = {}
    if peer is not None:
        figures.update(torch_cuda=peer.torch.version.cuda, torch_threads=threads,
                       torch_first_loss=runners[2].first_loss(),
                       spread_params_loss=losses["its loss on spread params"][0],
                       torch_spread_params_loss=losses["its loss on spread params"][1],
                       torch_compile_error=compile_error)
        for r in runners[2:]:
            key = r.label.replace(" ", "_").replace(".", "_")  # torch_eager, torch_compile
            rounds = common.ratios(tps["ours"], tps[r.label])
            peer_figures[r.label] = dict(spread=common.spread(tps[r.label]), ratio=rounds)
            figures.update({
                f"{key}_tokens_per_s": statistics.median(tps[r.label]),
                f"{key}_tokens_per_s_range": [min(tps[r.label]), max(tps[r.label])],
                f"{key}_first_call_s": first[r.label],
                f"ratio_to_{key}": rounds["median"],
                f"ratio_to_{key}_range": [rounds["min"], rounds["max"]],
            })
    f = figures
    timed = ", ".join(r.label for r in runners)
    print(f"train_step benchmark: model=bench (D=256 L=4 H=4 F=1024) T={SEQ_LEN} B={BATCH}, "
          f"{f['device']}, jax {f['jax']}, XLA_FLAGS={f['xla_flags'] or '(none)'}")
    print(f"  blocks of {args.steps} steps, median of {args.repeats} rounds; {timed} timed in "
          f"turns, the order rotated per round")
    if peer is not None:
        rel = lambda x, y: abs(y - x) / abs(x)
        x, y = losses["its loss on spread params"]
        print(f"  PyTorch peer: {peer.version_line(threads)}; first loss "
              f"{f['torch_first_loss']:.6f}, ours {our_loss:.6f} (relative difference "
              f"{rel(our_loss, f['torch_first_loss']):.1e}); on spread params {y:.4f}, ours "
              f"{x:.4f} ({rel(x, y):.1e})")
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
    for n, label in ((8, "torch eager"), (9, "torch.compile")):
        name = f"{n}. ours / {label}".ljust(30)
        if label in peer_figures:
            t, r = peer_figures[label]["spread"], peer_figures[label]["ratio"]
            print(f"  {name}{r['median']:10.3f}     (rounds {r['min']:.3f}..{r['max']:.3f}; "
                  f"{label} {t['median']:.0f} tokens/s, blocks {t['min']:.0f}..{t['max']:.0f}; "
                  f"first call {first[label]:.1f} s)")
        else:
            why = peer_skipped or ("--no-torch-compile" if args.no_torch_compile
                                   else compile_error)
            print(f"  {name}{'-':>10}     (not timed: {why})")
    spread = max(peaks) / min(peaks)
    for line in machine.report(
            note=f"the matmul peak varied x{spread:.2f} across rounds",
            busy_note="other processes were using the CPUs; a shared CPU slows the 2048 matmul "
                      "more than the step, so MFU reads high under load. Rerun on an idle "
                      "machine."):
        print(line)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
