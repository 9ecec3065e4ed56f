"""Cost of a meta-gradient on the LM inner problem: TBPTT over plain steps, memory, ES throughput.

  .venv/bin/python benchmarks/meta_step.py                # nano model, K = 8: ~6 min on 2 busy CPUs
  .venv/bin/python benchmarks/meta_step.py --ks 8,16 --diagnostics
  .venv/bin/python benchmarks/meta_step.py --model mini --batch 16 --memory-ks 8,32

Everything runs in one process on the first device, on `lm_problem` (learned_loss/meta) with the
learned token loss at its MLE initialisation, `train.constant_adam` (clipped adam,
eps_root > 0) and a fresh random model. The demonstrations are synthetic: random byte rows whose
last `--answer-len` positions are the masked answer, so no dataset has to be built.

  1. TBPTT cost ratio: the time of one TBPTT outer step (`jax.value_and_grad` with respect to
     theta through `base.unroll` of K inner steps, one particle) over K plain inner steps
     (`problem.step` jitted alone, chained). Second-order backprop through adam costs about
     3 plain steps per inner step (forward, then the backward of a forward + backward);
     rematerialisation adds one more forward + backward, hence the target of <= 4. Also shown:
     the forward unroll alone (the scan's own overhead) and, with --diagnostics,
     `tbptt.tbptt(...).estimate` with one particle (the estimator's resets and vmap on top of the
     bare gradient) and the plain step under the learned loss over the plain step under MLE
     (what the per-token features cost). Under the timings, the same ratio in FLOPs from XLA's
     cost analysis of the compiled executables (`flop_ratios`): what the machine's load cannot
     blur.
  2. Memory of the compiled TBPTT step at each K of `--memory-ks`, with and without remat, from
     XLA's buffer assignment (`compiled.memory_analysis()`): temporaries, arguments and outputs.
  3. ES throughput: inner steps per second of `es.antithetic_es(...).estimate` (P pairs, each
     3 unrolls of K: theta + sigma z, theta - sigma z and theta) against a single jitted
     unperturbed unroll of K steps.

Compiling dominates the run time (a TBPTT step compiles in 30-50 s on 2 CPUs, whatever K: the
inner steps are one lax.scan). Timed figures are medians over `--repeats` rounds after one
untimed call; within a round every function runs once, so that a ratio is taken between figures
of the same round (the machine is assumed shared and noisy: read the spread, not the median
alone).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import models  # noqa: E402
from learned_loss.core import train  # noqa: E402
from learned_loss.core import model as model_lib  # noqa: E402
from learned_loss import objectives  # noqa: E402
from learned_loss.meta import base, es, lm_problem, tbptt  # noqa: E402
from learned_loss.data import training_rows  # noqa: E402
from learned_loss.objectives import learned  # noqa: E402

TARGET_RATIO = 4.0
MIB = 2.0 ** 20
# Every token feature except the reference model's log-probability, which costs one more
# forward pass of the frozen reference per step (a cost of the features, not of TBPTT).
FEATURES = tuple(f for f in learned.TOKEN_FEATURES if f != "ref_log_prob")
# Compiler options of executables that are only measured, never run: buffer assignment happens
# on the HLO before LLVM code generation, so the sizes are those of a default compile, which
# takes ~1.5x as long.
MEMORY_ONLY = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# ---------------------------------------------------------------------------------------------
# The inner problem on synthetic demonstrations.


def synthetic_rows(num_rows: int, seq_len: int, answer_len: int, vocab_size: int,
                   rng: np.random.Generator) -> training_rows.Demonstrations:
    """Random byte rows [N, T]; the last `answer_len` targets are the answer (mask 1)."""
    tokens = rng.integers(0, min(256, vocab_size), size=(num_rows, seq_len + 1)).astype(np.int32)
    mask = np.zeros((num_rows, seq_len), np.float32)
    mask[:, -answer_len:] = 1.0
    return training_rows.Demonstrations(inputs=tokens[:, :-1], targets=tokens[:, 1:], mask=mask,
                                     corrupted=np.zeros((num_rows,), bool))


def build_problem(args, features):
    """(problem, objective) of `args`: the model size, batch, sequence length, features."""
    cfg = model_lib.ModelConfig.from_config(models.model_config(args.model, max_len=args.seq_len))
    rng = np.random.default_rng(0)
    train_rows = synthetic_rows(args.rows, args.seq_len, args.answer_len, cfg.vocab_size, rng)
    valid_rows = synthetic_rows(args.rows, args.seq_len, args.answer_len, cfg.vocab_size, rng)
    if features:
        objective = objectives.build({"name": "learned_token_loss", "features": features})
    else:
        objective = objectives.build("mle")
    problem = lm_problem.lm_problem(
        model_lib.build(cfg), train.make_optimizer(train.constant_adam(args.lr), differentiable=True),
        objective, train_rows, valid_rows, batch_size=args.batch, valid_batch_size=args.batch, seq_len=args.seq_len)
    return problem, objective


def tbptt_step(problem: base.InnerProblem, num_steps: int, remat: bool):
    """(theta, inner, key) -> (meta-loss, d meta-loss / d theta) over `num_steps` inner steps."""

    def meta_loss(theta, inner, key):
        return base.unroll(problem, theta, inner, key, num_steps, remat=remat)[1]

    return jax.value_and_grad(meta_loss)


def forward_unroll(problem: base.InnerProblem, num_steps: int):
    """(theta, inner, key) -> (inner, meta-loss): one unperturbed run of `num_steps` steps."""

    def run(theta, inner, key):
        return base.unroll(problem, theta, inner, key, num_steps)

    return run


# ---------------------------------------------------------------------------------------------
# Compiling and timing.


def compile_fn(fn, *args, options=None):
    """(the AOT-compiled `jax.jit(fn)` for `args`, seconds to trace, lower and compile)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
    return compiled, time.perf_counter() - start


def seconds(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def chained_seconds(step, theta, inner, keys) -> float:
    """Wall time of len(keys) plain inner steps, each on the previous step's state."""
    start = time.perf_counter()
    for key in keys:
        inner = step(theta, inner, key)
    jax.block_until_ready(inner)
    return time.perf_counter() - start


def memory_mib(compiled) -> dict[str, float]:
    """XLA's buffer sizes of a compiled executable, MiB: temp, args, out, total (aliased
    outputs counted once)."""
    m = compiled.memory_analysis()
    total = (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
             - m.alias_size_in_bytes)
    return {"temp": m.temp_size_in_bytes / MIB, "args": m.argument_size_in_bytes / MIB,
            "out": m.output_size_in_bytes / MIB, "total": total / MIB}


def flops(compiled) -> float:
    return compiled.cost_analysis()["flops"]


def tree_mib(tree) -> float:
    return sum(x.nbytes for x in jax.tree.leaves(tree)) / MIB


def spread(xs) -> str:
    return f"{min(xs):.2f}..{max(xs):.2f}"


# ---------------------------------------------------------------------------------------------
# The three sections.



def cost_ratio(args, problem, theta, inner, key):
    """Section 1. Returns {(K, remat): compiled TBPTT step}, {K: compiled forward unroll} and
    the compiled plain step, for the later sections."""
    print(f"1. TBPTT outer step / (K x plain inner step), median of {args.repeats} rounds "
          f"(target <= {TARGET_RATIO:g} with remat)")
    plain, plain_compile = compile_fn(problem.step, theta, inner, key)
    print(f"   plain step compiled in {plain_compile:.1f} s")
    steps, unrolls = {}, {}
    for k in args.ks:
        keys = list(jax.random.split(jax.random.key(1), k))
        fns = {"forward unroll (no grad)": compile_fn(forward_unroll(problem, k), theta, inner,
                                                      key)}
        unrolls[k] = fns["forward unroll (no grad)"][0]
        for remat in (True, False):
            fns[f"tbptt, remat={remat}"] = compile_fn(tbptt_step(problem, k, remat), theta,
                                                      inner, key)
            steps[(k, remat)] = fns[f"tbptt, remat={remat}"][0]
        args_of = {name: (theta, inner, key) for name in fns}
        if args.diagnostics:
            # The estimator adds resets (a fresh init per call) and a vmap over the particles.
            estimator = tbptt.tbptt(problem, base.TruncationSchedule(k, 100 * k, 100 * k),
                                    num_particles=1, remat=True)
            particles = estimator.init(theta, key)
            name = "tbptt.tbptt estimate, 1 particle"
            fns[name] = compile_fn(estimator.estimate, theta, particles, key)
            args_of[name] = (theta, particles, key)

        chained_seconds(plain, theta, inner, keys)  # Untimed first calls.
        for name, (fn, _) in fns.items():
            seconds(fn, *args_of[name])
        plain_s, timed = [], {name: [] for name in fns}
        for _ in range(args.repeats):
            plain_s.append(chained_seconds(plain, theta, inner, keys))
            for name, (fn, _) in fns.items():
                timed[name].append(seconds(fn, *args_of[name]))

        step_ms = [1e3 * s / k for s in plain_s]
        print(f"   K={k}: plain step {statistics.median(step_ms):.2f} ms "
              f"(rounds {spread(step_ms)})")
        unroll_s = timed["forward unroll (no grad)"]
        for name, (_, compile_s) in fns.items():
            ratios = [t / p for t, p in zip(timed[name], plain_s)]
            ratio = statistics.median(ratios)
            over_unroll = ""
            if name != "forward unroll (no grad)":
                over = statistics.median([t / u for t, u in zip(timed[name], unroll_s)])
                over_unroll = f"; over the forward unroll {over:.2f}"
            verdict = ""
            if name == "tbptt, remat=True":
                verdict = "  meets the target" if ratio <= TARGET_RATIO else "  MISSES the target"
            print(f"   K={k}: {name:33s} {1e3 * statistics.median(timed[name]):7.1f} ms  "
                  f"ratio {ratio:5.2f} (rounds {spread(ratios)}; fastest / fastest "
                  f"{min(timed[name]) / min(plain_s):.2f}{over_unroll}; compile {compile_s:.0f} s)"
                  f"{verdict}")
        flop_ratios(k, plain, unrolls[k], steps)
    return steps, unrolls, plain


def flop_ratios(k, plain, unroll, steps):
    """The TBPTT step's FLOPs over K plain steps, from XLA's cost analysis.

    XLA counts a loop body once, whatever its trip count, so the forward unroll's FLOPs are a
    plain step's plus the meta-loss's, and a TBPTT step's are the forward and backward scan
    bodies (one inner step each) plus the meta-loss's value and gradient (taken as 3 forwards).
    """
    step = flops(plain)
    meta = 3.0 * (flops(unroll) - step)  # The meta-loss's forward and backward, once per unroll.
    for remat in (True, False):
        per_step = (flops(steps[(k, remat)]) - meta) / step
        print(f"   K={k}: FLOPs, remat={remat}: {per_step:.2f} plain steps per inner step + "
              f"{meta / step:.2f} per unroll for the meta-loss -> FLOP ratio "
              f"{per_step + meta / (k * step):.2f}")


def features_overhead(args, mle_problem, plain, theta, inner, key):
    """What the learned loss's features cost in a plain step: its step over MLE's."""
    keys = list(jax.random.split(jax.random.key(2), max(args.ks)))
    mle_step, _ = compile_fn(mle_problem.step, (), inner, key)
    chained_seconds(mle_step, (), inner, keys)
    ratios = []
    for _ in range(args.repeats):
        ratios.append(chained_seconds(plain, theta, inner, keys)
                      / chained_seconds(mle_step, (), inner, keys))
    print(f"   plain step, learned token loss / MLE: {statistics.median(ratios):.2f} "
          f"(rounds {spread(ratios)}): the features' share of a plain step")


def memory_table(args, problem, theta, inner, key, steps):
    """Section 2: XLA's buffer sizes of the TBPTT step at each K, with and without remat.

    Steps not compiled for timing are compiled with `MEMORY_ONLY`.
    """
    print(f"2. memory of the compiled TBPTT step (MiB; XLA buffer assignment on "
          f"{jax.devices()[0].platform}); inner state (params + adam) {tree_mib(inner):.2f} MiB")
    print(f"   {'K':>4}  {'remat temp':>10} {'args':>6} {'out':>6} {'total':>7}   "
          f"{'no-remat temp':>13} {'total':>8}   {'no-remat / remat':>16}")
    totals = {}
    for k in args.memory_ks:
        row = {}
        for remat in (True, False):
            compiled = steps.get((k, remat))
            if compiled is None:
                compiled, _ = compile_fn(tbptt_step(problem, k, remat), theta, inner, key,
                                         options=MEMORY_ONLY)
            row[remat] = memory_mib(compiled)
            totals[(k, remat)] = row[remat]["total"]
        on, off = row[True], row[False]
        print(f"   {k:4d}  {on['temp']:10.2f} {on['args']:6.2f} {on['out']:6.2f} "
              f"{on['total']:7.2f}   {off['temp']:13.2f} {off['total']:8.2f}   "
              f"{off['total'] / on['total']:16.2f}")
    lo, hi = min(args.memory_ks), max(args.memory_ks)
    if hi > lo:
        for remat in (True, False):
            per_step = (totals[(hi, remat)] - totals[(lo, remat)]) / (hi - lo)
            print(f"   remat={remat}: {per_step:.3f} MiB more per inner step of K")


def es_throughput(args, problem, theta, inner, key, unrolls):
    """Section 3: inner steps/s of antithetic ES against one unperturbed run."""
    k = args.es_k
    pairs = args.pairs
    members = 3 * pairs  # theta + sigma z, theta - sigma z, theta: one unroll each per pair.
    print(f"3. ES throughput: es.antithetic_es with {pairs} pairs ({members} unrolls of K={k} per "
          f"estimate) vs one unperturbed unroll, median of {args.repeats} rounds")
    estimator = es.antithetic_es(problem, base.TruncationSchedule(k, 100 * k, 100 * k),
                                 num_pairs=pairs)
    particles = estimator.init(theta, key)
    estimate, es_compile = compile_fn(estimator.estimate, theta, particles, key)
    single, single_compile = unrolls.get(k), 0.0
    if single is None:
        single, single_compile = compile_fn(forward_unroll(problem, k), theta, inner, key)
    seconds(estimate, theta, particles, key)
    seconds(single, theta, inner, key)
    es_rate, single_rate = [], []
    for _ in range(args.repeats):
        es_rate.append(members * k / seconds(estimate, theta, particles, key))
        single_rate.append(k / seconds(single, theta, inner, key))
    ratios = [e / s for e, s in zip(es_rate, single_rate)]
    es_med, single_med = statistics.median(es_rate), statistics.median(single_rate)
    print(f"   ES, all members:  {es_med:8.1f} inner steps/s  "
          f"({es_med / members:.1f} per member; compile {es_compile:.1f} s)")
    print(f"   single run:       {single_med:8.1f} inner steps/s")
    print(f"   ES / single:      {statistics.median(ratios):8.2f}  (rounds {spread(ratios)}; "
          f"1: a member costs as much as a lone run; > 1: vmapping the population pays)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nano", choices=sorted(models.VARIANTS))
    parser.add_argument("--batch", type=int, default=32, help="inner and validation batch")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--answer-len", type=int, default=8, help="masked positions per row")
    parser.add_argument("--rows", type=int, default=256, help="synthetic rows per split")
    parser.add_argument("--lr", type=float, default=1e-3, help="inner adam learning rate")
    parser.add_argument("--features", default=",".join(FEATURES),
                        help="learned token loss features, comma-separated")
    parser.add_argument("--ks", default="8", help="unroll lengths K timed in section 1")
    parser.add_argument("--memory-ks", default="8,32,64", help="unroll lengths of section 2")
    parser.add_argument("--es-k", type=int, default=8, help="unroll length of section 3")
    parser.add_argument("--pairs", type=int, default=4, help="ES antithetic pairs")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--skip-es", action="store_true")
    parser.add_argument("--diagnostics", action="store_true",
                        help="also time tbptt.tbptt's estimate and the plain step under MLE "
                             "(two more compiles)")
    args = parser.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    args.memory_ks = [int(k) for k in args.memory_ks.split(",")]
    features = tuple(f for f in args.features.split(",") if f)

    start = time.perf_counter()
    problem, objective = build_problem(args, features)
    theta = objective.theta
    key = jax.random.key(0)
    inner = problem.init(key)
    print(f"meta_step benchmark: model={args.model} {models.VARIANTS[args.model]} "
          f"T={args.seq_len} B={args.batch}, "
          f"{model_lib.param_count(inner['params']) / 1e6:.3f}M params, "
          f"theta {sum(x.size for x in jax.tree.leaves(theta))} scalars, features {features}")
    print(f"  {jax.devices()[0].device_kind}, jax {jax.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '') or '(none)'}")

    steps, unrolls, plain = cost_ratio(args, problem, theta, inner, key)
    if args.diagnostics:
        mle_problem, _ = build_problem(args, ())
        features_overhead(args, mle_problem, plain, theta, inner, key)
    memory_table(args, problem, theta, inner, key, steps)
    if not args.skip_es:
        es_throughput(args, problem, theta, inner, key, unrolls)
    print(f"total {time.perf_counter() - start:.0f} s; load average at the end "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
