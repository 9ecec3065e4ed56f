"""The optimizer section shared by every training config (see
`learned_loss.core.train.make_optimizer`): AdamW with linear warm-up, cosine decay to
`min_lr_ratio * lr`, and global-norm clipping."""

import ml_collections


def adamw(lr: float, warmup_steps: int, weight_decay: float) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "adamw"
    config.lr = lr
    config.warmup_steps = warmup_steps
    config.min_lr_ratio = 0.1
    config.b1 = 0.9
    config.b2 = 0.95
    config.eps = 1e-8
    config.eps_root = 1e-8  # > 0 keeps adam differentiable for meta-gradients.
    config.weight_decay = weight_decay
    config.grad_clip = 1.0
    return config
