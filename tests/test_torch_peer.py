"""The PyTorch peer of the benchmarks (benchmarks/torch_peer.py) is our model: on copied params it
gives our logits and our greedy tokens (`sampling.generate`), so the benchmarks time the same
model. Params at a scale where attention and every position matter (`common.random_params`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import common, torch_peer
from configs import models
from learned_loss.core import model as model_lib
from learned_loss.core import sampling

N = 6  # New tokens.


@pytest.fixture(scope="module")
def setup():
    cfg = model_lib.ModelConfig.from_config(models.model_config("nano", max_len=32))
    model = model_lib.build(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    params = common.random_params(shapes, seed=0)
    return model, params, torch_peer.from_haiku(cfg, params)


def test_same_logits(setup):
    model, params, peer = setup
    tokens = np.random.default_rng(1).integers(0, 256, size=(2, 16)).astype(np.int32)
    ours = np.asarray(jax.jit(model.apply)(params, tokens).logits)  # [2, 16, V]
    with torch.inference_mode():
        theirs = peer(torch.from_numpy(tokens).long()).numpy()
    assert np.abs(ours).max() > 1.0  # Logits far from uniform: the check has teeth.
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)


def test_same_greedy_tokens(setup):
    model, params, peer = setup
    prompts = np.random.default_rng(2).integers(0, 256, size=(3, 8)).astype(np.int32)
    lengths = np.full((3,), 8, np.int32)
    ours = np.asarray(sampling.generate(model, params, prompts, lengths, None,
                                        max_new_tokens=N, eos_id=-1).tokens)  # [3, N]
    theirs = torch_peer.Greedy(peer)(torch.from_numpy(prompts).long(), N).numpy()
    assert len(np.unique(ours)) > 3  # Not one repeated token.
    np.testing.assert_array_equal(theirs, ours)


def test_refuses_params_it_cannot_place(setup):
    model, params, _ = setup
    cfg = model.config
    extra = dict(params, **{"transformer/unembed": {"w": np.zeros((cfg.d_model, cfg.vocab_size))}})
    with pytest.raises(ValueError, match="no place for.*unembed/w"):
        torch_peer.from_haiku(cfg, extra)
    missing = {k: v for k, v in params.items() if k != "transformer/final_norm"}
    with pytest.raises(ValueError, match="no transformer/final_norm/scale"):
        torch_peer.from_haiku(cfg, missing)
    with pytest.raises(ValueError, match="written for"):
        torch_peer.Transformer(cfg.__class__(**dict(vars(cfg), norm="rmsnorm")))
