"""Named model sizes. A config picks one with `model_config(variant)`; any field can then be
overridden from the command line, e.g. `--config.model.num_layers=8`.

Parameter counts are for the 260-token byte vocabulary with tied embeddings (rotary positions):
  nano ~0.12M, mini ~0.43M, tiny ~1.0M, bench ~3.2M, small ~10.8M, base ~85M.
"""

import ml_collections

VARIANTS = {
    "nano": dict(d_model=64, num_layers=2, num_heads=4, d_ff=256),
    "mini": dict(d_model=128, num_layers=2, num_heads=4, d_ff=512),
    "tiny": dict(d_model=128, num_layers=5, num_heads=4, d_ff=512),
    # The benchmark model of benchmarks/train_step.py.
    "bench": dict(d_model=256, num_layers=4, num_heads=4, d_ff=1024),
    "small": dict(d_model=384, num_layers=6, num_heads=6, d_ff=1536),
    "base": dict(d_model=768, num_layers=12, num_heads=12, d_ff=3072),
}

# Defaults shared by every variant (see learned_loss.core.model.ModelConfig).
COMMON = dict(
    vocab_size=260,
    head_dim=0,
    norm="layernorm",
    positions="rotary",
    rope_base=10_000.0,
    tie_embeddings=True,
    scalar_head=False,
    init_scale=0.02,
    compute_dtype="float32",
)

# Megatron-style tensor parallelism: heads and MLP hidden units over `model`; the rest
# (embeddings, norms, output biases) replicated. Paths are haiku `module/name`.
PARTITION_RULES = (
    (r"attn/qkv$", (None, None, "model", None)),  # [D, 3, H, K]
    (r"attn/out$", ("model", None, None)),  # [H, K, D]
    (r"mlp/w_in$", (None, "model")),  # [D, F]
    (r"mlp/b_in$", ("model",)),  # [F]
    (r"mlp/w_out$", ("model", None)),  # [F, D]
)


def model_config(variant: str, max_len: int) -> ml_collections.ConfigDict:
    """Every ModelConfig field for a named size, as an overridable ConfigDict."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return ml_collections.ConfigDict(
        dict(variant=variant, max_len=max_len, **COMMON, **VARIANTS[variant]))
