"""RLHF baselines from an SFT policy: preference pairs from its own samples -> reward model ->
PPO / RLOO / GRPO / DPO, then the reward over-optimization analysis (best-of-n and RL).

  python -m experiments.finetune --config=configs/finetune.py:words --workdir=/tmp/sft
  python -m experiments.rlhf --config=configs/rlhf.py:words --workdir=/tmp/rlhf \
      --config.sft_from=/tmp/sft [--config.preferences.length_bias=1.0 \
      --config.preferences.length_scale=8]

`sft_from` names a fine-tuning workdir (its newest checkpoint is the SFT policy, the reference
policy and the reward model's initialisation). The model and the task split come from that run.
Variants: `smoke` (seconds; for tests), `easy` (the four easy families of
`configs/finetune.py:easy`), `words` (count_words from the early-stopped
`configs/finetune.py:words`, about 16 minutes on 2 CPU cores with all four algorithms), `tiny`
(meta-train families).
"""

import ml_collections

from configs import finetune, optimizers, tasks

ALGORITHMS = ("ppo", "rloo", "grpo", "dpo")

VARIANTS = {
    "smoke": dict(families=finetune.EASY_FAMILIES[:2], pairs=48, pair_seq_len=72,
                  pair_samples=2, rm_steps=8, rm_batch=8, rl_steps=3, rl_batch=8, k=2,
                  max_new=8, dpo_steps=3, dpo_batch=8, eval_prompts=4, eval_samples=2,
                  bon_prompts=2, bon_samples=16, log=1, eval=3, rm_eval=4, eval_batch=16),
    "easy": dict(families=finetune.EASY_FAMILIES, pairs=400, pair_seq_len=64,
                 pair_samples=2, rm_steps=300, rm_batch=32, rl_steps=60, rl_batch=16, k=4,
                 max_new=12, dpo_steps=150, dpo_batch=32, eval_prompts=16, eval_samples=4,
                 bon_prompts=8, bon_samples=512, log=5, eval=10, rm_eval=100),
    # One family from the early-stopped SFT policy of configs/finetune.py:words (55% exact
    # match, so RL has room to improve it); more prompts per evaluation for a steadier curve.
    "words": dict(families=("count_words",), pairs=1000, pair_seq_len=64, pair_samples=4,
                  rm_steps=300, rm_batch=32, rl_steps=60, rl_batch=16, k=4, max_new=12,
                  dpo_steps=150, dpo_batch=32, eval_prompts=64, eval_samples=4,
                  bon_prompts=32, bon_samples=512, log=5, eval=10, rm_eval=100),
    # Meta-train families at difficulties 1-3 (at 1 several have too few validation inputs).
    "tiny": dict(families=(), difficulty=(1, 3), pairs=200, pair_seq_len=176, pair_samples=2,
                 rm_steps=1000, rm_batch=32, rl_steps=200, rl_batch=16, k=4, max_new=24,
                 dpo_steps=500,
                 dpo_batch=32, eval_prompts=4, eval_samples=4, bon_prompts=2,
                 bon_samples=512, log=10, eval=25, rm_eval=250),
}


def _train_section(steps: int, log: int, eval_every: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.num_steps = steps
    config.log_every = log
    config.eval_every = eval_every
    config.eval_batches = 4
    config.checkpoint_every = eval_every
    config.keep_checkpoints = 2
    config.async_checkpoints = True
    config.peak_flops_per_device = 0.0
    return config


def get_config(arg: str = "easy") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of configs/rlhf.py; choose one of "
                         f"{sorted(VARIANTS)}")
    v = VARIANTS[arg]
    config = ml_collections.ConfigDict()
    config.variant = arg
    config.seed = 0
    config.sft_from = ""  # A fine-tuning workdir (required).
    config.algorithms = ALGORITHMS
    # Where the preference-pair and reward-model stages live; empty: the workdir. Runs from the
    # same SFT policy and seed with the same settings may share one (the compare run's RLHF
    # cells of one noise kind and seed do); other settings there are refused.
    config.shared_dir = ""

    config.tasks = tasks.task_config()
    config.tasks.families = v["families"]
    config.tasks.difficulty = v.get("difficulty", (1, 1))
    config.data = ml_collections.ConfigDict()
    config.data.data_dir = ""  # Empty: $TFDS_DATA_DIR or ~/.cache/learned_loss/tfds.

    # Pairs of the SFT policy's samples (and gold answers and corruptions), labelled by the
    # simulated Bradley-Terry labeler of `learned_loss.data.preference_pairs`.
    config.preferences = ml_collections.ConfigDict()
    config.preferences.pairs_per_family = v["pairs"]
    # Room for [BOS] prompt [SEP] completion [EOS] of every candidate; longer than the SFT
    # sequence so that corruptions (the gold answer with letters appended) fit. Positions are
    # rotary, so the reward model reads any length.
    config.preferences.seq_len = v["pair_seq_len"]
    config.preferences.tau = 0.05
    config.preferences.length_bias = 0.0  # lambda > 0 favours longer completions.
    config.preferences.length_scale = 0.0  # L in bytes; 0: preferences.seq_len.
    config.preferences.samples_per_prompt = v["pair_samples"]
    config.preferences.temperature = 1.0
    config.preferences.top_k = 0
    config.preferences.batch_size = v.get("eval_batch", 64)

    # Reward model: the SFT Transformer with a scalar head read at the EOS (Ouyang et al. 2022).
    config.reward_model = ml_collections.ConfigDict()
    config.reward_model.global_batch_size = v["rm_batch"]
    config.reward_model.center_coef = 0.0  # trl's center_rewards_coefficient (e.g. 0.01).
    config.reward_model.optimizer = optimizers.adamw(1e-3, 20, weight_decay=0.0)
    config.reward_model.train = _train_section(v["rm_steps"], v["log"], v["rm_eval"])

    # On-policy RL (trl defaults where trl has them; see learned_loss.rlhf.training.RLSettings).
    config.rl = ml_collections.ConfigDict()
    config.rl.global_batch_size = v["rl_batch"]  # Prompts per step.
    config.rl.samples_per_prompt = v["k"]  # K completions per prompt (RLOO/GRPO groups).
    config.rl.max_new_tokens = v["max_new"]
    config.rl.temperature = 1.0
    config.rl.top_k = 0
    config.rl.kl_coef = 0.05  # Initial (or fixed) coefficient of the KL penalty.
    config.rl.kl_target = 0.0  # > 0: adaptive KL controller (Ziegler et al. 2019) with this target.
    config.rl.kl_horizon = 10_000.0
    config.rl.epochs = 4
    config.rl.minibatches = 2
    config.rl.missing_eos_penalty = 1.0
    config.rl.clip_range = 0.2
    config.rl.clip_range_value = 0.2
    config.rl.vf_coef = 0.1
    config.rl.gamma = 1.0
    config.rl.lam = 0.95
    config.rl.whiten_advantages = True
    config.rl.grpo_beta = 0.04
    # What PPO / RLOO / GRPO maximise: the reward model's score, or 'learned': the meta-trained
    # r_theta(score, length, EOS) of the `learned_reward` artifact at learned_reward_path
    # (WORKDIR/artifact of experiments/meta_train_reward.py).
    config.rl.reward = "reward_model"
    config.rl.learned_reward_path = ""
    config.rl.optimizer = optimizers.adamw(1e-4, 5, weight_decay=0.0)
    config.rl.optimizer.min_lr_ratio = 1.0  # A constant rate after warm-up.
    config.rl.train = _train_section(v["rl_steps"], v["log"], v["eval"])

    # DPO (Rafailov et al. 2023) on the same preference pairs.
    config.dpo = ml_collections.ConfigDict()
    config.dpo.global_batch_size = v["dpo_batch"]
    config.dpo.beta = 0.1
    config.dpo.loss_type = "sigmoid"  # Or 'ipo', or 'learned' (the preference loss below).
    config.dpo.label_smoothing = 0.0
    # loss_type='learned': a `learned_preference_loss` artifact (a meta-trained f_theta of
    # beta * delta, learned_loss/objectives/learned.py); empty means its initialisation, which
    # is exactly DPO's loss.
    config.dpo.learned_path = ""
    config.dpo.optimizer = optimizers.adamw(3e-4, 10, weight_decay=0.0)
    config.dpo.optimizer.min_lr_ratio = 1.0
    config.dpo.train = _train_section(v["dpo_steps"], v["log"], v["eval"])

    # What every run logs at each evaluation: samples (temperature 1) of fixed prompts scored by
    # the reward model (proxy) and the gold scorers, KL to the SFT policy, and length.
    config.eval = ml_collections.ConfigDict()
    config.eval.prompts_per_family = v["eval_prompts"]
    config.eval.samples_per_prompt = v["eval_samples"]
    config.eval.batch_size = v.get("eval_batch", 64)

    # Best-of-n against the reward model, n = 1, 2, 4, ... up to `samples` per prompt.
    config.best_of_n = ml_collections.ConfigDict()
    config.best_of_n.prompts_per_family = v["bon_prompts"]
    config.best_of_n.samples = v["bon_samples"]
    config.best_of_n.batch_size = v.get("eval_batch", 256)

    config.analysis = ml_collections.ConfigDict()
    config.analysis.length_buckets = 4

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = {"data": -1, "model": 1}
    return config
