"""Decoder-only Transformer language model in haiku, with a KV-cache decode path.

Shapes:
  B: batch, T: query positions, S: key positions (cache capacity when decoding),
  D: model width, H: attention heads, K: head width (D // H unless set), F: MLP width,
  V: vocabulary, L: layers.

The architecture follows GPT-2 (Radford et al. 2019) with pre-normalisation, and the choices
a config can switch: LayerNorm or RMSNorm (Zhang and Sennrich 2019), rotary positions
(Su et al. 2021, RoFormer) or learned absolute positions, tied or separate unembedding, and an
optional scalar head (a value or reward head, read per position).

Parameter layout (the sharding rules in `configs/` match these paths):
  transformer/embed/embeddings            [V, D]
  transformer/pos_embed/embeddings        [max_len, D]   (learned positions only)
  transformer/layer_{i}/attn_norm/...     [D]
  transformer/layer_{i}/attn/qkv          [D, 3, H, K]   query, key and value projections
  transformer/layer_{i}/attn/out          [H, K, D]
  transformer/layer_{i}/mlp_norm/...      [D]
  transformer/layer_{i}/mlp/w_in, b_in    [D, F], [F]
  transformer/layer_{i}/mlp/w_out, b_out  [F, D], [D]
  transformer/final_norm/...              [D]
  transformer/unembed/w                   [D, V]          (untied only)
  transformer/scalar_head/w, b            [D, 1], [1]     (value/reward head only)

Heads and the MLP hidden units sit on their own axes so that a PartitionSpec can put them on the
`model` mesh axis (Megatron-style tensor parallelism, Shoeybi et al. 2019).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp

Params = Any  # A haiku params mapping.

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("rotary", "learned")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters; `configs/models.py` holds the named sizes."""

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    max_len: int
    head_dim: int = 0  # 0: d_model // num_heads.
    norm: str = "layernorm"
    positions: str = "rotary"
    rope_base: float = 10_000.0
    tie_embeddings: bool = True
    scalar_head: bool = False  # A value/reward head on the final hidden state.
    init_scale: float = 0.02
    compute_dtype: str = "float32"  # Matmul dtype; norms, softmax and logits stay float32.

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"model.norm={self.norm!r} is not one of {NORMS}")
        if self.positions not in POSITIONS:
            raise ValueError(f"model.positions={self.positions!r} is not one of {POSITIONS}")
        if not self.head_dim and self.d_model % self.num_heads:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.num_heads="
                f"{self.num_heads}; change one of them or set model.head_dim")
        if self.positions == "rotary" and self.key_size % 2:
            raise ValueError(f"rotary positions need an even head width, got {self.key_size}")

    @property
    def key_size(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ModelConfig":
        """Builds from a ConfigDict/dict, ignoring keys that only name the variant."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = dict(config)
        unknown = set(values) - fields - {"variant"}
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**{k: v for k, v in values.items() if k in fields})


class Output(NamedTuple):
    logits: jax.Array  # [B, T, V] float32
    scalar: Optional[jax.Array]  # [B, T] float32 when the config has a scalar head.
    cache: Optional["Cache"]  # Updated cache when one was given.


class Cache(NamedTuple):
    """KV cache for decoding: keys/values per layer and the next write position per row."""

    keys: tuple  # L x [B, S, H, K]
    values: tuple  # L x [B, S, H, K]
    pos: jax.Array  # [B] int32: number of tokens already written for each row.


def init_cache(cfg: ModelConfig, batch_size: int, capacity: int) -> Cache:
    """An empty cache able to hold `capacity` positions per row."""
    dtype = jnp.dtype(cfg.compute_dtype)
    shape = (batch_size, capacity, cfg.num_heads, cfg.key_size)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return Cache(keys=zeros, values=zeros, pos=jnp.zeros((batch_size,), jnp.int32))


def _norm(cfg: ModelConfig, name: str) -> hk.Module:
    if cfg.norm == "rmsnorm":
        return hk.RMSNorm(axis=-1, eps=1e-6, name=name)
    return hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, eps=1e-6, name=name)


def rotary(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotates pairs (x[..., i], x[..., i + K/2]) by angle pos * base^(-2i/K) (RoFormer eq. 34).

    Args:
      x: [B, T, H, K].
      positions: [B, T] integer positions.
      base: the wavelength base (10000 in RoFormer).
    Returns:
      [B, T, H, K], same dtype as x.
    """
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [K/2]
    angle = positions[..., None].astype(jnp.float32) * freq  # [B, T, K/2]
    sin = jnp.sin(angle)[:, :, None, :]  # [B, T, 1, K/2]
    cos = jnp.cos(angle)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _write_rows(buffer: jax.Array, update: jax.Array, start: jax.Array) -> jax.Array:
    """Writes update [B, T, ...] into buffer [B, S, ...] at per-row offsets start [B]."""

    def one(b, u, s):
        return jax.lax.dynamic_update_slice_in_dim(b, u, s, axis=0)

    return jax.vmap(one)(buffer, update.astype(buffer.dtype), start)


class Attention(hk.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017) with an optional KV cache."""

    def __init__(self, cfg: ModelConfig, name: str = "attn"):
        super().__init__(name=name)
        self.cfg = cfg

    def __call__(self, x, positions, cache_kv=None):
        """x: [B, T, D]; positions: [B, T]; cache_kv: ([B, S, H, K], [B, S, H, K]) or None."""
        cfg = self.cfg
        dtype = jnp.dtype(cfg.compute_dtype)
        d, h, k = cfg.d_model, cfg.num_heads, cfg.key_size
        init = hk.initializers.TruncatedNormal(cfg.init_scale)
        # GPT-2 scales residual-output projections by 1/sqrt(2L) at init.
        out_init = hk.initializers.TruncatedNormal(cfg.init_scale / math.sqrt(2 * cfg.num_layers))
        w_qkv = hk.get_parameter("qkv", [d, 3, h, k], init=init)
        w_out = hk.get_parameter("out", [h, k, d], init=out_init)

        qkv = jnp.einsum("btd,dchk->cbthk", x.astype(dtype), w_qkv.astype(dtype))
        q, key, value = qkv[0], qkv[1], qkv[2]  # each [B, T, H, K]
        if cfg.positions == "rotary":
            q = rotary(q, positions, cfg.rope_base)
            key = rotary(key, positions, cfg.rope_base)

        if cache_kv is None:
            keys, values = key, value  # [B, S=T, H, K]
            key_pos = positions  # [B, S]
        else:
            start = positions[:, 0]  # [B]
            keys = _write_rows(cache_kv[0], key, start)  # [B, S, H, K]
            values = _write_rows(cache_kv[1], value, start)
            key_pos = jnp.broadcast_to(jnp.arange(keys.shape[1]), keys.shape[:2])  # [B, S]

        scores = jnp.einsum("bthk,bshk->bhts", q, keys).astype(jnp.float32)  # [B, H, T, S]
        scores = scores * (1.0 / math.sqrt(k))
        causal = key_pos[:, None, None, :] <= positions[:, None, :, None]  # [B, 1, T, S]
        scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        attended = jnp.einsum("bhts,bshk->bthk", probs, values)  # [B, T, H, K]
        out = jnp.einsum("bthk,hkd->btd", attended, w_out.astype(dtype))  # [B, T, D]
        new_kv = None if cache_kv is None else (keys, values)
        return out.astype(jnp.float32), new_kv


class MLP(hk.Module):
    """Position-wise GELU MLP: gelu(x W_in + b_in) W_out + b_out."""

    def __init__(self, cfg: ModelConfig, name: str = "mlp"):
        super().__init__(name=name)
        self.cfg = cfg

    def __call__(self, x):  # [B, T, D] -> [B, T, D]
        cfg = self.cfg
        dtype = jnp.dtype(cfg.compute_dtype)
        init = hk.initializers.TruncatedNormal(cfg.init_scale)
        out_init = hk.initializers.TruncatedNormal(cfg.init_scale / math.sqrt(2 * cfg.num_layers))
        w_in = hk.get_parameter("w_in", [cfg.d_model, cfg.d_ff], init=init)
        b_in = hk.get_parameter("b_in", [cfg.d_ff], init=jnp.zeros)
        w_out = hk.get_parameter("w_out", [cfg.d_ff, cfg.d_model], init=out_init)
        b_out = hk.get_parameter("b_out", [cfg.d_model], init=jnp.zeros)
        hidden = jnp.dot(x.astype(dtype), w_in.astype(dtype)) + b_in.astype(dtype)  # [B, T, F]
        hidden = jax.nn.gelu(hidden)
        out = jnp.dot(hidden, w_out.astype(dtype)) + b_out.astype(dtype)  # [B, T, D]
        return out.astype(jnp.float32)


class Transformer(hk.Module):
    """The full LM: embeddings, L pre-norm blocks, final norm, logits (and a scalar head)."""

    def __init__(self, cfg: ModelConfig, name: str = "transformer"):
        super().__init__(name=name)
        self.cfg = cfg

    def __call__(self, tokens: jax.Array, cache: Optional[Cache] = None) -> Output:
        """tokens: [B, T] int. With a cache, positions continue from `cache.pos`."""
        cfg = self.cfg
        batch, length = tokens.shape
        offset = jnp.zeros((batch,), jnp.int32) if cache is None else cache.pos
        positions = offset[:, None] + jnp.arange(length, dtype=jnp.int32)  # [B, T]

        embed = hk.Embed(cfg.vocab_size, cfg.d_model, name="embed",
                         w_init=hk.initializers.TruncatedNormal(cfg.init_scale))
        x = embed(tokens)  # [B, T, D]
        if cfg.positions == "learned":
            with hk.name_scope("pos_embed"):
                pos_table = hk.get_parameter(
                    "embeddings", [cfg.max_len, cfg.d_model],
                    init=hk.initializers.TruncatedNormal(cfg.init_scale / 2))
            x = x + jnp.take(pos_table, positions, axis=0)  # [B, T, D]

        new_keys, new_values = [], []
        for i in range(cfg.num_layers):
            with hk.name_scope(f"layer_{i}"):
                cache_kv = None if cache is None else (cache.keys[i], cache.values[i])
                attn_out, kv = Attention(cfg)(_norm(cfg, "attn_norm")(x), positions, cache_kv)
                x = x + attn_out
                x = x + MLP(cfg)(_norm(cfg, "mlp_norm")(x))
                if kv is not None:
                    new_keys.append(kv[0])
                    new_values.append(kv[1])
        x = _norm(cfg, "final_norm")(x)  # [B, T, D]

        dtype = jnp.dtype(cfg.compute_dtype)
        if cfg.tie_embeddings:
            logits = jnp.dot(x.astype(dtype), embed.embeddings.T.astype(dtype))  # [B, T, V]
        else:
            with hk.name_scope("unembed"):
                w = hk.get_parameter("w", [cfg.d_model, cfg.vocab_size],
                                     init=hk.initializers.TruncatedNormal(cfg.init_scale))
            logits = jnp.dot(x.astype(dtype), w.astype(dtype))
        logits = logits.astype(jnp.float32)

        scalar = None
        if cfg.scalar_head:
            # Zero init: a PPO value head starts at 0 (trl's default); a reward head learns from 0.
            scalar = hk.Linear(1, w_init=jnp.zeros, name="scalar_head")(x)[..., 0]  # [B, T]

        new_cache = None
        if cache is not None:
            new_cache = Cache(tuple(new_keys), tuple(new_values), cache.pos + length)
        return Output(logits=logits, scalar=scalar, cache=new_cache)


class Model(NamedTuple):
    """Pure functions of one architecture."""

    config: ModelConfig
    init: Any  # (rng, tokens [B, T]) -> params
    apply: Any  # (params, tokens [B, T], cache=None) -> Output


def build(cfg: ModelConfig) -> Model:
    """Transforms the haiku module into a pair of pure functions."""

    def forward(tokens, cache=None):
        return Transformer(cfg)(tokens, cache)

    fn = hk.without_apply_rng(hk.transform(forward))
    return Model(config=cfg, init=fn.init, apply=fn.apply)


# ---------------------------------------------------------------------------------------------
# Size and cost.


def param_count(params: Params) -> int:
    """Total number of scalars in a params tree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def matmul_param_count(cfg: ModelConfig) -> int:
    """Parameters that take part in a matmul per token: attention, MLP and the unembedding.

    Embedding lookups, norms and biases are excluded (Kaplan et al. 2020, section 2.1).
    """
    d, h, k, f = cfg.d_model, cfg.num_heads, cfg.key_size, cfg.d_ff
    per_layer = d * 3 * h * k + h * k * d + 2 * d * f
    return cfg.num_layers * per_layer + d * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int, training: bool = True) -> float:
    """Model FLOPs per token: 6N + 12 L H K T for training (PaLM, Chowdhery et al. 2022, App. B).

    N is `matmul_param_count`; the attention term counts QK^T and AV over the full T x T
    window (as PaLM's MFU does). Inference is a third of training.
    """
    n = matmul_param_count(cfg)
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.key_size * seq_len
    train = 6 * n + attention
    return float(train if training else train / 3)
