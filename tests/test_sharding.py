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
