"""Device mesh and parameter placement.

The mesh comes from the config as `{axis name: size}` (one size may be -1 to take the remaining
devices). Axis order is fixed (`pop`, `data`, `model`): the population of an evolution strategy
varies slowest, tensor parallelism fastest, so model-parallel shards sit on neighbouring devices.
Devices are laid out by `jax.make_mesh`, which follows the physical topology on TPU and GPU (on
CPU it keeps `jax.devices()` order). On several TPU slices, `mesh.dcn` = {axis: slices} says which
axes span the slices over the data-centre network (`jax.experimental.mesh_utils.
create_hybrid_device_mesh`): e.g. {'data': 2} on two slices puts half of `data` in each slice
and keeps `model` inside a slice, on its fast interconnect (ICI).

Parameters are placed by partition rules: an ordered list of `(regex, spec)` pairs matched against
the haiku path `module/name` of each parameter (e.g. `transformer/layer_0/attn/qkv`). The first rule
whose regex matches (`re.search`) gives the PartitionSpec; a parameter no rule matches is
replicated. The same idea as MaxText's logical axis rules and big_vision's `sharding_rules`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import optax
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from learned_loss.core import errors

AXIS_ORDER = ("pop", "data", "model")
Rules = Sequence[tuple[str, Sequence[Any]]]


class ShardingError(errors.UserError):
    """A mesh or partition rule that cannot be applied to these devices or parameters."""


def mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolves a `{axis: size}` mapping (one -1 allowed) against the device count.

    Returns the axes in AXIS_ORDER with their sizes; raises ShardingError with the fix when the
    sizes do not multiply to the number of devices.
    """
    unknown = set(shape) - set(AXIS_ORDER)
    if unknown:
        raise ShardingError(f"unknown mesh axes {sorted(unknown)}; use names from {AXIS_ORDER}")
    sizes = {a: int(shape[a]) for a in AXIS_ORDER if a in shape}
    fill = [a for a, s in sizes.items() if s == -1]
    if len(fill) > 1:
        raise ShardingError(f"mesh.shape {sizes} has more than one -1; at most one axis can fill")
    if any(s == 0 or s < -1 for s in sizes.values()):
        raise ShardingError(f"mesh.shape {sizes} has a size that is not positive or -1")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if fill:
        if num_devices % fixed:
            raise ShardingError(
                f"mesh.shape {sizes} does not divide the {num_devices} devices: the fixed axes "
                f"need a multiple of {fixed}; choose sizes whose product divides {num_devices}")
        sizes[fill[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ShardingError(
            f"mesh.shape {sizes} covers {fixed} devices but {num_devices} are available; choose "
            f"sizes whose product is {num_devices} (or set one axis to -1)")
    return sizes


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None,
              dcn: Mapping[str, int] | None = None) -> Mesh:
    """A Mesh over `devices` (default: all global devices) with Auto axis types.

    Auto axes let XLA propagate shardings through haiku's embedding gather, which Explicit axes
    (the `jax.make_mesh` default) reject. dcn: {axis: slices} for a multi-slice TPU
    (`device_grid`); empty or all ones: one slice.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(shape, len(devices))
    grid = device_grid(sizes, devices, dcn)
    return Mesh(grid, tuple(sizes), axis_types=(AxisType.Auto,) * len(sizes))


def config_mesh(mesh_config: Mapping[str, Any],
                devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh of a config's `mesh` section: `shape`, and `dcn` where the config has it."""
    return make_mesh(mesh_config["shape"], devices, mesh_config.get("dcn", {}))


def slice_count(devices: Sequence[Any]) -> int:
    """How many TPU slices `devices` come from (devices without `slice_index`: one)."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def device_grid(sizes: Mapping[str, int], devices: Sequence[Any],
                dcn: Mapping[str, int] | None = None) -> np.ndarray:
    """`devices` as an array of shape `sizes.values()` (sizes resolved by `mesh_shape`).

    One slice: `jax.make_mesh`'s order (rings and tori of the physical topology on TPU; a mesh
    shape the topology cannot hold falls back to device order, with a warning). Several slices:
    `dcn` = {axis: slices} must name how many slices each axis spans (their product is the
    slice count; an axis's size must be a multiple of its slices); each slice then holds a
    contiguous block of every axis, laid out within the slice like one slice's mesh.
    """
    dcn = {a: int(n) for a, n in (dcn or {}).items()}
    unknown = set(dcn) - set(sizes)
    if unknown:
        raise ShardingError(f"mesh.dcn names axes {sorted(unknown)} that mesh.shape {dict(sizes)} "
                            f"does not have; use axes of the mesh")
    slices = slice_count(devices)
    spans = math.prod(dcn.values())
    if any(n < 1 for n in dcn.values()) or spans != slices:
        raise ShardingError(
            f"mesh.dcn {dcn} spans {spans} slices but the {len(devices)} devices form {slices}; "
            f"give each axis the slices it spans so that they multiply to {slices}")
    shape = tuple(sizes.values())
    if slices == 1:
        try:
            grid = jax.make_mesh(shape, tuple(sizes), devices=devices,
                                 axis_types=(AxisType.Auto,) * len(shape)).devices
        except (ValueError, NotImplementedError) as e:
            logging.warning("mesh %s does not map onto the device topology (%s); the devices "
                            "are laid out in their listed order", dict(sizes), e)
            grid = np.asarray(devices, dtype=object).reshape(shape)
        return grid
    for axis, n in dcn.items():
        if sizes[axis] % n:
            raise ShardingError(f"mesh.shape.{axis}={sizes[axis]} cannot span {n} slices "
                                f"(mesh.dcn.{axis}); make it a multiple of {n}")
    ici = tuple(sizes[a] // dcn.get(a, 1) for a in sizes)
    across = tuple(dcn.get(a, 1) for a in sizes)
    return mesh_utils.create_hybrid_device_mesh(ici, across, devices,
                                                allow_split_physical_axes=True)


def mesh_description(mesh: Mesh) -> dict[str, int]:
    """{axis name: size}, for logs and provenance."""
    return {name: int(size) for name, size in mesh.shape.items()}


def _path_string(path) -> str:
    """Haiku params are {module: {name: array}}; the rule path is `module/name`."""
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _spec_for(path: str, shape: tuple[int, ...], rules: Rules, mesh: Mesh) -> P:
    for pattern, spec in rules:
        if re.search(pattern, path):
            spec = tuple(spec)
            if len(spec) != len(shape):
                raise ShardingError(
                    f"rule {pattern!r} gives {len(spec)} axes for parameter {path} of shape "
                    f"{shape}; write one entry per dimension")
            for dim, axis in zip(shape, spec):
                # Axis names this mesh does not have are dropped: that dimension is replicated.
                names = [n for n in (axis if isinstance(axis, tuple) else (axis,))
                         if n is not None and n in mesh.shape]
                size = math.prod(mesh.shape[n] for n in names)
                if dim % size:
                    raise ShardingError(
                        f"parameter {path} of shape {shape} cannot be split {size} ways along "
                        f"{axis!r} (rule {pattern!r}); change the model size or the mesh")
            return P(*(_keep_mesh_axes(a, mesh) for a in spec))
    return P()


def _keep_mesh_axes(axis, mesh: Mesh):
    """Drops axis names the mesh does not have, so one rule set serves every mesh."""
    if axis is None:
        return None
    names = tuple(n for n in (axis if isinstance(axis, tuple) else (axis,)) if n in mesh.shape)
    if not names:
        return None
    return names if isinstance(axis, tuple) else names[0]


def param_specs(params: Any, rules: Rules, mesh: Mesh) -> Any:
    """A PartitionSpec for every leaf of a params tree, from the first matching rule."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: _spec_for(_path_string(path), tuple(x.shape), rules, mesh), params)


def named(mesh: Mesh, specs: Any) -> Any:
    """PartitionSpec tree -> NamedSharding tree."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda s: isinstance(s, P))


def opt_state_specs(optimizer: optax.GradientTransformation, abstract_params: Any,
                    specs: Any) -> Any:
    """Specs for an optimizer state: moments follow their parameter, everything else replicated.

    Replicating the scalars (adam's `count`) matters: `opt.init` on sharded params leaves them
    on device 0 otherwise, and a jitted step would then reject or move them.
    """
    abstract_state = jax.eval_shape(optimizer.init, abstract_params)
    return optax.tree_map_params(
        optimizer, lambda _, spec: spec, abstract_state, specs,
        transform_non_params=lambda _: P(),
        is_leaf=lambda x: isinstance(x, P))


def batch_spec(mesh: Mesh) -> P:
    """Batch rows over `data` (and `pop`, when the mesh has it, outermost)."""
    axes = tuple(a for a in ("pop", "data") if a in mesh.shape)
    return P(axes if len(axes) > 1 else (axes[0] if axes else None))


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays split over the batch axes.

    Every process passes its own contiguous block of rows (process p holds rows
    [p * B / P, (p + 1) * B / P) of the global batch); on one process this is a plain device_put.
    """
    sharding = NamedSharding(mesh, batch_spec(mesh))
    out = {}
    for key, value in local_batch.items():
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def check_batch_divides(global_batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the batch axes and over the processes."""
    ways = math.prod(mesh.shape[a] for a in ("pop", "data") if a in mesh.shape)
    if global_batch_size % ways:
        raise ShardingError(
            f"global batch size {global_batch_size} does not split over {ways} data shards; "
            f"use a multiple of {ways}")
    if global_batch_size % jax.process_count():
        raise ShardingError(
            f"global batch size {global_batch_size} does not split over "
            f"{jax.process_count()} processes; use a multiple of {jax.process_count()}")
