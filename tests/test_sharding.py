"""Meshes, partition rules and the sharded train step on 8 simulated CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import models, pretrain
from learned_loss import objectives
from learned_loss.core import sharding, train
from learned_loss.core import model as model_lib


def test_mesh_shape_fills_and_validates():
    assert sharding.mesh_shape({"model": 2, "data": -1}, 8) == {"data": 4, "model": 2}
    assert sharding.mesh_shape({"data": 8}, 8) == {"data": 8}
    with pytest.raises(sharding.ShardingError, match="covers 3 devices but 8 are available"):
        sharding.mesh_shape({"data": 3}, 8)
    with pytest.raises(sharding.ShardingError, match="does not divide the 8 devices"):
        sharding.mesh_shape({"data": -1, "model": 3}, 8)
    with pytest.raises(sharding.ShardingError, match="unknown mesh axes"):
        sharding.mesh_shape({"batch": 8}, 8)
    with pytest.raises(sharding.ShardingError, match="more than one -1"):
        sharding.mesh_shape({"data": -1, "model": -1}, 8)


def test_mesh_axis_order_and_types():
    mesh = sharding.make_mesh({"model": 2, "data": 4})
    assert mesh.axis_names == ("data", "model")
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def _state_and_shardings(mesh_shape, seed=0, devices=None):
    config = pretrain.get_config("smoke")
    cfg = model_lib.ModelConfig.from_config(config.model)
    model = model_lib.build(cfg)
    optimizer = train.make_optimizer(config.optimizer, num_steps=20)
    mesh = sharding.make_mesh(mesh_shape, devices)
    state, state_sh = train.create_sharded_state(
        model, optimizer, jax.random.key(seed), 16, config.sharding.rules, mesh)
    return config, model, optimizer, mesh, state, state_sh


def test_parameter_shards_have_expected_shapes():
    config, _, _, mesh, state, _ = _state_and_shardings({"data": 2, "model": 4})
    params = state.params
    d, f, h, k = 64, 256, 4, 16
    layer = "transformer/layer_0"
    expected_local = {
        (f"{layer}/attn", "qkv"): (d, 3, h // 4, k),
        (f"{layer}/attn", "out"): (h // 4, k, d),
        (f"{layer}/mlp", "w_in"): (d, f // 4),
        (f"{layer}/mlp", "b_in"): (f // 4,),
        (f"{layer}/mlp", "w_out"): (f // 4, d),
        (f"{layer}/mlp", "b_out"): (d,),
        ("transformer/embed", "embeddings"): (260, d),
    }
    for (module, name), shape in expected_local.items():
        array = params[module][name]
        assert array.addressable_shards[0].data.shape == shape, (module, name)
        assert len(array.sharding.device_set) == 8
    # Adam's moments follow their parameter; scalars (count, step) are replicated on the mesh.
    mu = state.opt_state[1][0].mu
    assert mu[f"{layer}/mlp"]["w_in"].sharding.spec == P(None, "model")
    count = state.opt_state[1][0].count
    assert count.sharding.spec == P() and len(count.sharding.device_set) == 8
    assert state.step.sharding.spec == P()


def test_rules_reject_indivisible_dimensions():
    mesh = sharding.make_mesh({"data": 1, "model": 8})
    params = {"transformer/layer_0/attn": {"qkv": jnp.zeros((64, 3, 4, 16))}}
    with pytest.raises(sharding.ShardingError, match="cannot be split 8 ways"):
        sharding.param_specs(params, models.PARTITION_RULES, mesh)


def test_rules_drop_axes_missing_from_the_mesh():
    mesh = sharding.make_mesh({"data": 8})
    params = {"transformer/layer_0/mlp": {"w_in": jnp.zeros((4, 8)), "b_out": jnp.zeros(4)}}
    specs = sharding.param_specs(params, models.PARTITION_RULES, mesh)
    assert specs["transformer/layer_0/mlp"]["w_in"] == P(None, None)
    assert specs["transformer/layer_0/mlp"]["b_out"] == P()


def _losses(mesh_shape, steps=20, devices=None):
    config, model, optimizer, mesh, state, state_sh = _state_and_shardings(
        mesh_shape, devices=devices)
    step_fn, _ = train.compile_steps(model, optimizer, objectives.build("mle"), state_sh, mesh)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        # Counting sequences with random starts and strides: learnable within 20 steps.
        start = rng.integers(0, 256, size=(8, 1))
        stride = rng.integers(1, 4, size=(8, 1))
        tokens = ((start + stride * np.arange(17)) % 256).astype(np.int32)
        batch = sharding.shard_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, mesh)
        state, metrics = step_fn(state, batch, ())
        losses.append(float(metrics["loss"]))
    return np.array(losses)


@pytest.fixture(scope="module")
def one_device_losses():
    return _losses({"data": 1}, devices=jax.devices()[:1])


@pytest.mark.parametrize("mesh_shape", [{"data": 8}, {"data": 4, "model": 2},
                                        {"data": 2, "model": 4}])
def test_sharded_losses_match_one_device(one_device_losses, mesh_shape):
    assert jax.device_count() == 8
    losses = _losses(mesh_shape)
    assert losses[-1] < losses[0]  # It trains.
    np.testing.assert_allclose(losses, one_device_losses, rtol=1e-5, atol=0)


class _FakeDevice:
    """A CPU-like device of a multi-slice job: what `create_hybrid_device_mesh` reads."""

    platform, device_kind, process_index = "cpu", "cpu", 0

    def __init__(self, id, slice_index):
        self.id, self.slice_index = id, slice_index

    def __repr__(self):
        return f"D{self.id}/s{self.slice_index}"


def test_hybrid_grid_puts_each_slice_in_a_block_of_its_dcn_axis():
    # Two slices of four, listed interleaved: the grid regroups them by slice.
    devices = [_FakeDevice(i, i % 2) for i in range(8)]
    grid = sharding.device_grid({"pop": 2, "data": 2, "model": 2}, devices, {"pop": 2})
    assert grid.shape == (2, 2, 2)
    assert [[d.id for d in g.flat] for g in grid] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    # Over `data` instead: each slice holds one data row of the (pop, model) block.
    grid = sharding.device_grid({"data": 2, "model": 4}, devices, {"data": 2})
    assert [d.slice_index for d in grid[0]] == [0] * 4 and [d.id for d in grid[1]] == [1, 3, 5, 7]
    # A mesh never spans slices silently, nor splits an axis unevenly over them.
    with pytest.raises(sharding.ShardingError, match="spans 1 slices but the 8 devices form 2"):
        sharding.device_grid({"data": 8}, devices)
    with pytest.raises(sharding.ShardingError, match="cannot span 2 slices"):
        sharding.device_grid({"data": 1, "model": 8}, devices, {"data": 2})
    with pytest.raises(sharding.ShardingError, match="does not have"):
        sharding.device_grid({"data": 8}, devices, {"pop": 2})
    with pytest.raises(sharding.ShardingError, match="spans 2 slices but the 4 devices form 1"):
        sharding.device_grid({"data": 4}, devices[::2], {"data": 2})


def test_one_slice_mesh_keeps_cpu_device_order_and_reads_the_configs_dcn():
    mesh = sharding.config_mesh({"shape": {"data": -1, "model": 2}, "dcn": {"data": 1}})
    assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]
    assert sharding.config_mesh({"shape": {"data": -1}}).devices.shape == (jax.device_count(),)
    with pytest.raises(sharding.ShardingError, match="form 1"):
        sharding.config_mesh({"shape": {"data": -1}, "dcn": {"data": 2}})
