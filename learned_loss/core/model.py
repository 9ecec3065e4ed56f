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
import functools
import math
from typing import Any, Mapping, NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from learned_loss.core import errors

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
            raise errors.UserError(f"unknown model config keys {sorted(unknown)}; "
                                   f"known: {sorted(fields)}")
        return cls(**{k: v for k, v in values.items() if k in fields})


class Output(NamedTuple):
    logits: jax.Array  # [B, T, V] float32
    scalar: Optional[jax.Array]  # [B, T] float32 when the config has a scalar head.
    cache: Optional["Cache"]  # Updated cache when one was given.


class Cache(NamedTuple):
    """KV cache for decoding: keys/values per layer and the next write position per row."""

    keys: tuple  # L x [B, H, S, K]: heads first, the layout the attention's dots read, so a
    values: tuple  # L x [B, H, S, K]   decode step never transposes the whole cache.
    pos: jax.Array  # [B] int32: number of tokens already written for each row.


def init_cache(cfg: ModelConfig, batch_size: int, capacity: int) -> Cache:
    """An empty cache able to hold `capacity` positions per row."""
    dtype = jnp.dtype(cfg.compute_dtype)
    shape = (batch_size, cfg.num_heads, capacity, cfg.key_size)
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
    return _apply_rotary(x, *_rotary_tables(positions, x.shape[-1], base))


def _rotary_tables(positions, key_size: int, base: float) -> tuple[jax.Array, jax.Array]:
    """cos and sign-folded sin of the rotary angles, each [B, T, 1, K] float32.

    cos_k = cos(angle_i) and sin_k = (-sin(angle_i), +sin(angle_i)) for k = i and k = i + K/2.
    Positions given as a numpy array (the cache-free path: 0..T-1, known when tracing) give
    tables computed once at trace time and baked into the program as constants, instead of
    sin/cos evaluated per element of every q and k in every layer.
    """

    def tables(pos):
        half = key_size // 2
        freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [K/2]
        angle = jnp.asarray(pos)[..., None].astype(jnp.float32) * freq  # [B, T, K/2]
        sin, cos = jnp.sin(angle), jnp.cos(angle)
        cos = jnp.concatenate([cos, cos], axis=-1)[:, :, None, :]  # [B, T, 1, K]
        sin = jnp.concatenate([-sin, sin], axis=-1)[:, :, None, :]
        return cos, sin

    if isinstance(positions, np.ndarray):
        with jax.ensure_compile_time_eval():
            return tables(positions)
    return tables(positions)


def _apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, H, K] -> (x1 cos - x2 sin, x2 cos + x1 sin) as one elementwise pass, with
    x1, x2 the two halves of K and the sign folded into `sin` (see `_rotary_tables`)."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    swapped = jnp.concatenate([x32[..., half:], x32[..., :half]], axis=-1)  # (x2, x1)
    return (x32 * cos + swapped * sin).astype(x.dtype)


def _attention_blocks(length: int) -> int:
    """Query blocks of the causal attention: 4 where T allows (skips 3/8 of the score matrix)."""
    for blocks in (4, 2):
        if length % blocks == 0:
            return blocks
    return 1


def _causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    """softmax(q k^T * scale + causal mask) v for positions 0..T-1, without a cache.

    The T queries are split into blocks; block i only scores the keys up to its own last
    position, so the upper-right blocks that the mask would zero are never computed (the
    result is the same as one masked T x T softmax). Masking adds a float32 min bias (built from
    iotas, so no T x T constant sits in the program), which gives the same probabilities
    (exactly 0) and gradients as a `where`.

    Args:
      q, k, v: [B, H, T, K].
    Returns:
      [B, H, T, K] in v's dtype.
    """
    length = q.shape[2]
    size = length // _attention_blocks(length)
    out = []
    for lo in range(0, length, size):
        hi = lo + size
        query_pos = jax.lax.broadcasted_iota(jnp.int32, (size, hi), 0) + lo  # [t, s]
        key_pos = jax.lax.broadcasted_iota(jnp.int32, (size, hi), 1)
        bias = jnp.where(key_pos <= query_pos, 0.0, jnp.finfo(jnp.float32).min)  # [t, s]
        scores = jnp.einsum("bhtk,bhsk->bhts", q[:, :, lo:hi], k[:, :, :hi])  # [B, H, t, s]
        scores = scores.astype(jnp.float32) * scale + bias
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out.append(jnp.einsum("bhts,bhsk->bhtk", probs, v[:, :, :hi]))  # [B, H, t, K]
    return out[0] if len(out) == 1 else jnp.concatenate(out, axis=2)


def _write_rows(buffer: jax.Array, update: jax.Array, start: jax.Array) -> jax.Array:
    """Writes update [B, H, T, K] into buffer [B, H, S, K] at per-row offsets start [B]."""

    def one(b, u, s):
        return jax.lax.dynamic_update_slice_in_dim(b, u, s, axis=1)

    return jax.vmap(one)(buffer, update.astype(buffer.dtype), start)


class Attention(hk.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017) with an optional KV cache."""

    def __init__(self, cfg: ModelConfig, name: str = "attn"):
        super().__init__(name=name)
        self.cfg = cfg

    def __call__(self, x, positions, cache_kv=None):
        """x: [B, T, D]; positions: [B, T] (a numpy array when there is no cache: every row is
        0..T-1); cache_kv: ([B, H, S, K], [B, H, S, K]) or None."""
        cfg = self.cfg
        dtype = jnp.dtype(cfg.compute_dtype)
        d, h, k = cfg.d_model, cfg.num_heads, cfg.key_size
        init = hk.initializers.TruncatedNormal(cfg.init_scale)
        # GPT-2 scales residual-output projections by 1/sqrt(2L) at init.
        out_init = hk.initializers.TruncatedNormal(cfg.init_scale / math.sqrt(2 * cfg.num_layers))
        w_qkv = hk.get_parameter("qkv", [d, 3, h, k], init=init)
        w_out = hk.get_parameter("out", [h, k, d], init=out_init)

        # One plain [B*T, D] x [D, H*K] matmul per projection: its output is already [B, T, H, K]
        # in memory (a fused 'btd,dchk->cbthk' einsum makes XLA transpose both the activations
        # and its output, and turns the backward of the q/k/v split into pads).
        batch, length = x.shape[:2]
        x2 = x.astype(dtype).reshape(batch * length, d)  # [B*T, D]

        def project(i):
            w = w_qkv[:, i].reshape(d, h * k).astype(dtype)  # [D, H*K]
            return jnp.dot(x2, w).reshape(batch, length, h, k)  # [B, T, H, K]

        q, key, value = project(0), project(1), project(2)
        if cfg.positions == "rotary":
            static = isinstance(positions, np.ndarray)
            # Without a cache every row holds 0..T-1: one [1, T, 1, K] table serves all rows.
            cos, sin = _rotary_tables(positions[:1] if static else positions, k, cfg.rope_base)
            q = _apply_rotary(q, cos, sin)
            key = _apply_rotary(key, cos, sin)

        scale = 1.0 / math.sqrt(k)
        heads_first = lambda a: jnp.swapaxes(a, 1, 2)  # [B, T, H, K] -> [B, H, T, K]
        q, key, value = heads_first(q), heads_first(key), heads_first(value)
        new_kv = None
        if cache_kv is None:
            attended = _causal_attention(q, key, value, scale)  # [B, H, T, K]
        else:
            start = positions[:, 0]  # [B]
            keys = _write_rows(cache_kv[0], key, start)  # [B, H, S, K]
            values = _write_rows(cache_kv[1], value, start)
            key_pos = jnp.arange(keys.shape[2])  # [S]
            scores = jnp.einsum("bhtk,bhsk->bhts", q, keys).astype(jnp.float32)  # [B, H, T, S]
            scores = scores * scale
            causal = key_pos[None, None, None, :] <= positions[:, None, :, None]  # [B, 1, T, S]
            scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
            attended = jnp.einsum("bhts,bhsk->bhtk", probs, values)  # [B, H, T, K]
            new_kv = (keys, values)
        attended = jnp.swapaxes(attended, 1, 2)  # [B, T, H, K]
        out = jnp.dot(attended.reshape(batch * length, h * k),
                      w_out.reshape(h * k, d).astype(dtype))  # [B*T, D]
        return out.reshape(batch, length, d).astype(jnp.float32), new_kv


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
        if cache is None:
            # Known when tracing: rotary tables and the causal mask become constants.
            positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
        else:
            positions = cache.pos[:, None] + jnp.arange(length, dtype=jnp.int32)  # [B, T]

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


@functools.lru_cache(maxsize=64)
def build(cfg: ModelConfig) -> Model:
    """Transforms the haiku module into a pair of pure functions. The same config gives the
    same Model object, so that programs jitted with the model as a static argument (sampling,
    evaluation) compile once per architecture, not once per build."""

    def forward(tokens, cache=None):
        return Transformer(cfg)(tokens, cache)

    fn = hk.without_apply_rng(hk.transform(forward))
    # init jitted: one program per input shape instead of haiku's eager pass through the model,
    # op by op (the same parameters, bit for bit).
    return Model(config=cfg, init=jax.jit(fn.init), apply=fn.apply)


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
