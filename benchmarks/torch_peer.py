"""Our Transformer written as a plain PyTorch module: the peer that the benchmarks time ours
against (benchmarks/train_step.py, benchmarks/sampling.py).

It is what a PyTorch user would write for `learned_loss.core.model.Transformer` in its default
architecture: pre-LayerNorm blocks (nn.LayerNorm, eps 1e-6, scale and offset), rotary positions
that rotate the pairs (x[i], x[i + K/2]) (RoFormer), F.scaled_dot_product_attention, no bias on
the attention projections, a GELU MLP (tanh approximation, as jax.nn.gelu) with biases, a final
norm, and logits from the tied embedding (x @ embed.T). `load_haiku_params` copies our haiku
params in, so that both compute the same function (tests/test_torch_peer.py checks the logits
and greedy decoding against ours).

Training: `TrainStep`, F.cross_entropy and torch.optim.AdamW (its default foreach update, run
eagerly), the forward and loss optionally under torch.compile.

Decoding: one preallocated KV cache per layer, [B, H, S, K]; a call writes its T keys and values
at the given positions and its queries attend over the whole cache under a mask of the positions
up to their own (the same work as our decode path, and static shapes: torch.compile builds one
program for the prefill and one for a decode step). Every row sits at the same positions (prompts
of one length).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def check_supported(cfg) -> None:
    """Raises ValueError unless `cfg` (a model.ModelConfig) is the architecture written here."""
    wanted = dict(norm="layernorm", positions="rotary", tie_embeddings=True, scalar_head=False,
                  compute_dtype="float32")
    different = {k: getattr(cfg, k) for k, v in wanted.items() if getattr(cfg, k) != v}
    if different:
        raise ValueError(f"the PyTorch peer is written for {wanted}; this config has {different}")


def rotary_tables(length: int, key_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles pos * base^(-2i/K), each [length, K] float32 (the K/2 angles
    twice over), computed in float32 as ours are."""
    half = key_size // 2
    freq = base ** (-torch.arange(half, dtype=torch.float32) / half)  # [K/2]
    angle = torch.arange(length, dtype=torch.float32)[:, None] * freq  # [length, K/2]
    return torch.cat([angle.cos()] * 2, dim=-1), torch.cat([angle.sin()] * 2, dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, K] -> (x1 cos - x2 sin, x2 cos + x1 sin), x1 and x2 the halves of K."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_heads, self.key_size = cfg.num_heads, cfg.key_size
        width = cfg.num_heads * cfg.key_size
        self.qkv = nn.Linear(cfg.d_model, 3 * width, bias=False)
        self.out = nn.Linear(width, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, cache=None, positions=None):
        """x [B, T, D]; cos, sin [T, K]; cache: (keys, values) [B, H, S, K] written at
        positions [T] (then the queries see the cache up to their own position), or None
        (positions 0..T-1, causal)."""
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, self.key_size).permute(
            2, 0, 3, 1, 4)  # Each [B, H, T, K].
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            keys, values = cache
            keys.index_copy_(2, positions, k)
            values.index_copy_(2, positions, v)
            visible = torch.arange(keys.shape[2]) <= positions[:, None]  # [T, S]
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
        return self.out(y.transpose(1, 2).reshape(batch, length, -1))  # [B, T, D]


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.w_in = nn.Linear(cfg.d_model, cfg.d_ff)
        self.w_out = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x):
        return self.w_out(F.gelu(self.w_in(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=1e-6)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=1e-6)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, positions=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, positions)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """tokens [B, T] int64 -> logits [B, T, V] float32."""

    def __init__(self, cfg):
        super().__init__()
        check_supported(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=1e-6)
        cos, sin = rotary_tables(cfg.max_len, cfg.key_size, cfg.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.num_heads, self.key_size = cfg.num_heads, cfg.key_size

    def forward(self, tokens, positions=None, caches=None):
        """Without caches the tokens sit at 0..T-1. With caches (from `new_caches`) they sit at
        positions [T] int64, the same for every row, and are written into the caches."""
        x = self.embed(tokens)  # [B, T, D]
        if caches is None:
            cos, sin = self.cos[:tokens.shape[1]], self.sin[:tokens.shape[1]]
        else:
            cos, sin = self.cos[positions], self.sin[positions]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if caches is None else caches[i], positions)
        return F.linear(self.final_norm(x), self.embed.weight)  # Tied: x @ embed.T.

    def new_caches(self, batch: int, capacity: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Empty keys and values for `capacity` positions, [B, H, S, K] each, per layer."""
        if capacity > self.cos.shape[0]:
            raise ValueError(f"a cache of {capacity} positions exceeds the rotary tables' "
                             f"{self.cos.shape[0]} (model.max_len)")
        shape = (batch, self.num_heads, capacity, self.key_size)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in self.layers]


def load_haiku_params(module: Transformer, params) -> Transformer:
    """Copies our haiku params ({'transformer/...': {name: array}}, see learned_loss/core/model.py)
    into `module`; every haiku leaf must be used and every torch parameter set."""
    p = {path: {name: torch.from_numpy(np.array(value, dtype=np.float32))
                for name, value in leaves.items()} for path, leaves in params.items()}
    used = set()

    def take(path, name):
        if path not in p or name not in p[path]:
            raise ValueError(f"the haiku params have no {path}/{name}")
        used.add((path, name))
        return p[path][name]

    def norm(target, path):
        target.weight.copy_(take(path, "scale"))
        target.bias.copy_(take(path, "offset"))

    d = module.embed.embedding_dim
    with torch.no_grad():
        module.embed.weight.copy_(take("transformer/embed", "embeddings"))  # [V, D]
        for i, layer in enumerate(module.layers):
            prefix = f"transformer/layer_{i}"
            norm(layer.attn_norm, f"{prefix}/attn_norm")
            norm(layer.mlp_norm, f"{prefix}/mlp_norm")
            # [D, 3, H, K] -> [D, 3HK] in (q|k|v, head, k) order, transposed for nn.Linear.
            layer.attn.qkv.weight.copy_(take(f"{prefix}/attn", "qkv").reshape(d, -1).T)
            layer.attn.out.weight.copy_(take(f"{prefix}/attn", "out").reshape(-1, d).T)
            layer.mlp.w_in.weight.copy_(take(f"{prefix}/mlp", "w_in").T)
            layer.mlp.w_in.bias.copy_(take(f"{prefix}/mlp", "b_in"))
            layer.mlp.w_out.weight.copy_(take(f"{prefix}/mlp", "w_out").T)
            layer.mlp.w_out.bias.copy_(take(f"{prefix}/mlp", "b_out"))
        norm(module.final_norm, "transformer/final_norm")
    unused = sorted(f"{path}/{name}" for path, leaves in p.items() for name in leaves
                    if (path, name) not in used)
    if unused:
        raise ValueError(f"haiku params the PyTorch peer has no place for: {unused}")
    return module


def from_haiku(cfg, params) -> Transformer:
    """A Transformer of `cfg` holding a copy of our haiku `params`."""
    return load_haiku_params(Transformer(cfg), params)


def mean_loss(module: Transformer, inputs, targets) -> torch.Tensor:
    """The mean token cross-entropy of `module` on inputs, targets [B, T] int64."""
    logits = module(inputs)  # [B, T, V]
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class TrainStep:
    """One AdamW step on the mean token cross-entropy; `compile` puts the forward and the loss
    under torch.compile (the backward comes with it through AOTAutograd)."""

    def __init__(self, module: Transformer, lr: float, compile: bool = False):
        self.module = module
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=lr, betas=(0.9, 0.95),
                                           weight_decay=0.1)
        loss = lambda inputs, targets: mean_loss(module, inputs, targets)
        self.loss = torch.compile(loss) if compile else loss

    def __call__(self, inputs, targets) -> torch.Tensor:
        """inputs, targets [B, T] int64 -> the loss before the update."""
        loss = self.loss(inputs, targets)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


class Greedy:
    """Greedy decoding with the KV cache: prefill the prompts, then one token at a time."""

    def __init__(self, module: Transformer, compile: bool = False):
        self.module = module
        self.forward = torch.compile(module, dynamic=False) if compile else module

    @torch.inference_mode()
    def __call__(self, prompts: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """prompts [B, P] int64, every row P real tokens -> new tokens [B, N] int64."""
        batch, width = prompts.shape
        # The last new token is never fed back: P + N - 1 cache slots.
        caches = self.module.new_caches(batch, width + max_new_tokens - 1)
        logits = self.forward(prompts, torch.arange(width), caches)  # [B, P, V]
        token = logits[:, -1].argmax(-1)  # [B]
        out = torch.empty((batch, max_new_tokens), dtype=torch.int64)
        out[:, 0] = token
        for t in range(1, max_new_tokens):
            position = torch.tensor([width + t - 1])
            token = self.forward(token[:, None], position, caches)[:, -1].argmax(-1)
            out[:, t] = token
        return out


def version_line(threads: int) -> str:
    """torch's version, whether it is the CPU build, and its thread count against XLA's."""
    build = "CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
    xla = os.cpu_count()  # XLA's CPU client runs a thread pool of one thread per core.
    same = ("as many as XLA's CPU client (os.cpu_count())" if threads == xla
            else f"XLA's CPU client uses {xla}")
    return (f"torch {torch.__version__} ({build}: torch.version.cuda is {torch.version.cuda}), "
            f"torch.set_num_threads({threads}), {same}")


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def try_compile(label: str, first_call):
    """Runs `first_call()` (which compiles); returns (seconds, None) or (None, one line why)."""
    start = time.perf_counter()
    try:
        first_call()
    except Exception as e:  # pylint: disable=broad-except  # Any failure: go on without it.
        lines = str(e).strip().splitlines()
        return None, f"{label}: {type(e).__name__}: {lines[0] if lines else ''}"[:300]
    return time.perf_counter() - start, None
