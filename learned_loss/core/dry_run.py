"""Ahead-of-time compilation of a config's real step for a TPU topology, on this CPU: per-chip
memory against the chip's HBM, FLOPs per step and the step-time bound they set (after MaxText's
train_compile.py). experiments/dry_run.py runs it from the command line.

The devices come from `jax.experimental.topologies.get_topology_desc` (libtpu describes the
chips; none is used), the mesh from the config's `mesh` section over them, and every input is a
`jax.ShapeDtypeStruct` with the NamedSharding the run gives it: nothing the size of the model is
allocated and no data is read. What is compiled is the package's own step:

  pre-training (configs/pretrain.py): `train.compile_steps`'s train step on the state of
      `train.init_state` placed by `train.state_shardings`, and a batch of
      {'inputs', 'targets'} [B, T] int32 over the batch axes;
  meta-training (configs/meta_train.py): the estimator's outer step, built by
      `learned_loss.meta.dry_run` (this module does not reach up into `meta`).

Memory per chip is `compiled.memory_analysis()`: arguments + outputs + temporaries - aliased
(donated) bytes. FLOPs per step are XLA's cost analysis (per chip, times the chips) beside the
model estimate 6 N tokens (N: `model.matmul_param_count`, tokens: those trained per step; 2 N
per token only scored). XLA counts a loop's body once (meta-training unrolls inner steps in a
loop), so the step's FLOPs are the larger of the two; the step cannot take less than those at
the chip's peak, and MFU cannot exceed the model FLOPs over them.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import math
import os
import re
import tempfile
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec as P

from learned_loss import objectives
from learned_loss.core import errors, loop, sharding, tpu_env, train
from learned_loss.core import model as model_lib

GiB = 1 << 30


class Chip(NamedTuple):
    """A TPU generation as a dry run sees it."""

    kind: str  # As in a topology name: v5e.
    hbm_bytes: int  # HBM per chip.
    peak_flops: float  # Dense bf16 FLOP/s per chip (datasheet).
    megacore: bool  # Its two TensorCores form one device (then a device is a chip).


# Google Cloud's TPU datasheets.
CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, True),
    "v5e": Chip("v5e", 16 * GiB, 197e12, False),
    "v5p": Chip("v5p", 95 * GiB, 459e12, True),
    "v6e": Chip("v6e", 32 * GiB, 918e12, False),
}


class Buffer(NamedTuple):
    """One buffer of the compiled program on one chip."""

    kind: str  # argument, output or temporary
    name: str  # The input's path, or the HLO value of an output or temporary.
    shape: str  # dtype[dims], e.g. f32[64,768]
    bytes: int


class Program(NamedTuple):
    """A jitted step and its abstract inputs, with what the report needs to judge it."""

    name: str
    fn: Callable
    args: tuple  # pytrees of jax.ShapeDtypeStruct with shardings
    arg_names: tuple  # one name per argument, for the buffers' paths
    tokens: int  # tokens trained per step (forward and backward)
    forward_tokens: int  # tokens only scored per step (forward)
    model_config: model_lib.ModelConfig
    seq_len: int
    fix: str  # What shrinks it, for the error when it does not fit.


class Report(NamedTuple):
    """What a dry run measured; bytes are per chip, FLOPs per step over all chips."""

    topology: str
    chip: Chip
    devices: int
    mesh: dict
    program: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    xla_flops: float
    params: int  # N: matmul parameters of the model
    tokens: int
    model_flops: float  # 6 N per trained token, 2 N per scored one (forward only)
    largest: tuple  # Buffers, largest first

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    @property
    def step_flops(self) -> float:
        """What the step computes at least: XLA's count, or the model's where that is larger
        (XLA's cost analysis counts a loop's body once: meta-training's unrolls are loops)."""
        return max(self.xla_flops, self.model_flops)

    @property
    def step_seconds(self) -> float:
        """The step's lower bound: its FLOPs per chip at the chip's peak."""
        return self.step_flops / self.devices / self.chip.peak_flops

    @property
    def mfu_bound(self) -> float:
        """Model FLOPs over the step's: the MFU of a step that ran at the chip's peak."""
        return self.model_flops / self.step_flops if self.step_flops else 0.0


# ---- topology --------------------------------------------------------------------------------


def parse_topology(name: str) -> tuple[Chip, int]:
    """'v5e:16x16' -> (CHIPS['v5e'], 256 chips)."""
    match = re.fullmatch(r"(v\w+?):(\d+(?:x\d+){1,2})", name)
    if not match or match.group(1) not in CHIPS:
        raise errors.UserError(f"--topology={name!r} is not KIND:AxB or KIND:AxBxC with KIND one "
                               f"of {sorted(CHIPS)}; e.g. v5e:16x16")
    return CHIPS[match.group(1)], math.prod(int(d) for d in match.group(2).split("x"))


def topology_devices(name: str, num_slices: int = 1) -> list:
    """The compile-only devices of `num_slices` slices of topology `name`, one per chip (megacore
    chips as one device), with `slice_index` when there are several slices. Needs libtpu."""
    chip, chips = parse_topology(name)
    if num_slices < 1:
        raise errors.UserError(f"--num_slices={num_slices}; use 1 or more")
    # libtpu reads these when it first loads (the entry point sets them before jax is imported).
    tpu_env.apply(os.environ, **tpu_env.COMPILE_ONLY)
    if importlib.util.find_spec("libtpu") is None:
        raise errors.UserError("a dry run needs libtpu to describe the chips; install it with "
                               "pip install -c requirements.lock -e '.[tpu]'")
    kwargs = {"chip_config_name": "megacore"} if chip.megacore else {}
    if num_slices > 1:
        kwargs["num_slices"] = num_slices
    try:
        devices = topologies.get_topology_desc(platform="tpu", topology_name=name,
                                               **kwargs).devices
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise errors.UserError(f"libtpu cannot lay out topology {name} ({first}); name one of "
                               f"whole hosts, e.g. v5e:2x2 or v5e:16x16") from None
    if len(devices) != chips * num_slices:
        raise errors.UserError(f"topology {name} gave {len(devices)} devices for {chips} chips x "
                               f"{num_slices} slices")
    return list(devices)


# ---- the programs ----------------------------------------------------------------------------


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves carrying `shardings` (a matching tree)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def replicated(tree: Any, mesh) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves, replicated over `mesh`."""
    return abstract(tree, jax.tree.map(lambda _: NamedSharding(mesh, P()), tree))


def pretrain_program(config, devices: Sequence) -> Program:
    """The sharded pre-training step of a configs/pretrain.py config over `devices`."""
    mesh, model_cfg = loop.mesh_and_model(config, devices)
    model = model_lib.build(model_cfg)
    optimizer = train.make_optimizer(config.optimizer, config.train.num_steps)
    objective = objectives.build(config.objective)
    seq_len, batch = config.data.seq_len, config.data.global_batch_size
    init = functools.partial(train.init_state, model, optimizer, seq_len=seq_len)
    state = jax.eval_shape(init, jax.random.key(config.seed))
    state_sh = train.state_shardings(state, optimizer, config.sharding.rules, mesh)
    step, _ = train.compile_steps(model, optimizer, objective, state_sh, mesh)
    tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32,
                                  sharding=NamedSharding(mesh, sharding.batch_spec(mesh)))
    theta = jax.eval_shape(functools.partial(train.step_theta, objective), state.params)
    theta = replicated(theta, mesh)
    if objective.needs_reference:  # The reference params are placed like the params.
        theta["reference"] = abstract(state.params, state_sh.params)
    fix = (f"a topology with more chips, more model sharding (--config.mesh.shape.model="
           f"{2 * mesh.shape.get('model', 1)}), or a smaller batch "
           f"(--config.data.global_batch_size={max(batch // 2, 1)})")
    return Program("pre-training train step", step,
                   (abstract(state, state_sh), {"inputs": tokens, "targets": tokens}, theta),
                   ("state", "batch", "theta"),
                   tokens=batch * seq_len, forward_tokens=0, model_config=model_cfg,
                   seq_len=seq_len, fix=fix)


def program_of(config, devices: Sequence) -> Program:
    """The pre-training step of a configs/pretrain.py config (meta-training configs:
    `learned_loss.meta.dry_run.program_of`)."""
    if "train" in config and "global_batch_size" in config.get("data", {}):
        return pretrain_program(config, devices)
    raise errors.UserError("a dry run compiles configs/pretrain.py or configs/meta_train.py "
                           "configs; this one has neither an estimator nor data.global_batch_size")


# ---- compiling and reporting -----------------------------------------------------------------


def _buffers_of_inputs(args: tuple, names: Sequence[str]) -> list[Buffer]:
    """Every input leaf as its per-chip shard, named by its path."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(dict(zip(names, args)))[0]:
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        size = int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
        dtype = jnp.dtype(leaf.dtype).name.replace("float", "f").replace("int", "s") \
            .replace("bool", "pred")
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        out.append(Buffer("argument", name, f"{dtype}[{','.join(map(str, shape))}]", size))
    return out


_VALUE = re.compile(r"value: <\d+ (\S+) @\d+> \(size=(\d+),offset=\d+\): (\w+\[[\d,]*\])")


def _buffers_of_dump(folder: str) -> list[Buffer]:
    """The outputs and temporaries of the buffer assignment XLA dumped into `folder`."""
    out = []
    for path in glob.glob(os.path.join(folder, "*after_optimizations-buffer-assignment.txt")):
        kind = None
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("allocation "):
                    # Arguments are named from the inputs; scalars in registers and buffers of
                    # other memory spaces (VMEM: color > 0) are not HBM.
                    kind = (None if "parameter" in line or "thread-local" in line
                            or re.search(r"color [1-9]", line) else
                            "output" if "live-out" in line or "output" in line else "temporary")
                    continue
                match = _VALUE.search(line)
                if match and kind:
                    out.append(Buffer(kind, match.group(1), match.group(3),
                                      int(match.group(2))))
    return out


def largest_buffers(program: Program, dumped: list[Buffer], count: int = 3) -> tuple:
    """The `count` largest per-chip buffers: input shards and XLA's outputs and temporaries."""
    inputs = _buffers_of_inputs(program.args, program.arg_names)
    return tuple(sorted(inputs + dumped, key=lambda b: -b.bytes)[:count])


def _size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _seconds(t: float) -> str:
    return f"{1e3 * t:.3f} ms" if t >= 1e-3 else f"{1e6 * t:.3f} us"


def _describe(buffers: Sequence[Buffer]) -> str:
    return "; ".join(f"{b.kind} {b.name} {b.shape} {_size(b.bytes)}" for b in buffers)


def compile_report(program: Program, topology: str, devices: Sequence,
                   config_name: str = "the config") -> Report:
    """Compiles `program` for `devices` and measures it. A program XLA finds too large for a
    chip's HBM is a UserError naming its largest buffers and the fix."""
    chip, _ = parse_topology(topology)
    mesh = jax.tree.leaves(program.args)[0].sharding.mesh
    with tempfile.TemporaryDirectory(prefix="dry_run_") as folder:
        try:
            # The dump holds XLA's buffer assignment: the largest buffers, even when it fails.
            compiled = program.fn.lower(*program.args).compile({"xla_dump_to": folder})
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            need = re.search(r"\(([\d.]+\w?)\) exceeds available HBM \(([\d.]+\w?)\)", str(e))
            amount = f"{need.group(1)}B of HLO temporaries (XLA)" if need else "more than its HBM"
            raise errors.UserError(
                f"{config_name} does not fit {topology}: a chip ({_size(chip.hbm_bytes)} HBM) "
                f"would need {amount}; largest buffers: "
                f"{_describe(largest_buffers(program, _buffers_of_dump(folder)))}; fix: "
                f"{program.fix}") from None
        dumped = _buffers_of_dump(folder)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    params = model_lib.matmul_param_count(program.model_config)
    return Report(
        topology=topology, chip=chip, devices=len(devices),
        mesh={k: int(v) for k, v in mesh.shape.items()}, program=program.name,
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
        xla_flops=float(cost.get("flops", 0.0)) * len(devices),
        params=params, tokens=program.tokens,
        model_flops=(6.0 * program.tokens + 2.0 * program.forward_tokens) * params,
        largest=largest_buffers(program, dumped))


def check_fits(report: Report, config_name: str = "the config", fix: str = "") -> None:
    """UserError (one line: need, largest buffers, fix) when a chip's HBM cannot hold it."""
    if report.total_bytes > report.chip.hbm_bytes:
        raise errors.UserError(
            f"{config_name} does not fit {report.topology}: a chip needs "
            f"{_size(report.total_bytes)} of its {_size(report.chip.hbm_bytes)} HBM; largest "
            f"buffers: {_describe(report.largest)}; fix: {fix}")


def format_report(report: Report, config_name: str = "") -> str:
    """The dry run's table: memory per chip, FLOPs per step, the step-time and MFU bounds."""
    r, hbm = report, report.chip.hbm_bytes
    scored = " + 2 N per scored token" if r.model_flops > 6.0 * r.params * r.tokens else ""
    mesh = " x ".join(f"{k}={v}" for k, v in r.mesh.items())
    rows = [
        f"dry run: {config_name} on {r.topology} ({r.devices} chips of TPU {r.chip.kind}, "
        f"{_size(hbm)} HBM and {r.chip.peak_flops:.3g} bf16 FLOP/s each)",
        f"  program            {r.program}",
        f"  mesh               {mesh}",
        "  memory per chip",
        f"    arguments        {_size(r.argument_bytes):>12}",
        f"    outputs          {_size(r.output_bytes):>12}",
        f"    temporaries      {_size(r.temp_bytes):>12}",
        f"    aliased          {_size(r.alias_bytes):>12}  (donated inputs reused as outputs)",
        f"    total            {_size(r.total_bytes):>12}  {100 * r.total_bytes / hbm:.1f}% of "
        f"{_size(hbm)} HBM",
        "  largest buffers    " + "\n                     ".join(
            f"{b.kind} {b.shape} {_size(b.bytes)} {b.name}" for b in r.largest),
        "  FLOPs per step",
        f"    XLA              {r.xla_flops:.3e}  ({r.xla_flops / r.devices:.3e} per chip; "
        f"a loop's body counted once)",
        f"    model 6 N tokens {r.model_flops:.3e}  (N = {_count(r.params)} matmul params, "
        f"{r.tokens:,} tokens trained{scored})",
        f"  step time >=       {_seconds(r.step_seconds)}  (the larger per chip at peak)",
        f"  MFU <=             {100 * r.mfu_bound:.1f}%  (model FLOPs / the larger)",
    ]
    return "\n".join(rows)


def dry_run(config, topology: str, num_slices: int = 1, config_name: str = "the config",
            program_of: Callable[[Any, Sequence], Program] = program_of) -> Report:
    """Compiles the step `program_of` builds for `config` on `num_slices` slices of `topology`
    and measures it; raises UserError when it does not fit a chip's HBM."""
    devices = topology_devices(topology, num_slices)
    program = program_of(config, devices)
    report = compile_report(program, topology, devices, config_name)
    if num_slices > 1:
        report = report._replace(topology=f"{num_slices} slices of {topology}")
    check_fits(report, config_name, program.fix)
    return report
