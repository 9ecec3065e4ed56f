"""Meta-training a learned reward r_theta for RL (experiments/meta_train_reward.py).

  python -m experiments.finetune --config=configs/finetune.py:words --workdir=/tmp/sft
  python -m experiments.meta_train_reward --config=configs/meta_train_reward.py:tiny \
      --workdir=/tmp/meta_reward --config.rlhf.sft_from=/tmp/sft
  python -m experiments.rlhf --config=configs/rlhf.py:words --workdir=/tmp/rlhf_learned \
      --config.sft_from=/tmp/sft --config.algorithms=rloo --config.rl.reward=learned \
      --config.rl.learned_reward_path=/tmp/meta_reward/artifact \
      --config.preferences.length_bias=1.0 --config.preferences.length_scale=8

The reward model comes from the RLHF pipeline's own stages (`config.rlhf`, a configs/rlhf.py
config; run in WORKDIR/rlhf, or reused from `rlhf_workdir`, e.g. a finished experiments.rlhf
workdir with the same preference and reward-model settings). Each inner run fine-tunes the SFT
policy with `inner.algorithm` (RLOO) for `inner.horizon` steps on r_theta = reward-model score +
k_theta(score, length, EOS); its fitness is the gold graded score of the final policy's samples
on held-out prompts; Open-ES (antithetic pairs, centered ranks, every member on the same prompts
and keys) moves theta, with sgd or adam on the ES gradient. The final comparison trains r_theta,
the reward model's score and the hand-set damping reward `final.runs` times each. Variants:
`smoke` (seconds, for tests), `tiny` (count_words from configs/finetune.py:words, a labeler
biased towards length as in the README's RLHF runs; 12 antithetic pairs; about 30 minutes on 2
CPU cores).
"""

import ml_collections

from configs import optimizers, rlhf

VARIANTS = {
    # rlhf variant, reward-model steps, RL prompts per step, K, epochs, inner lr, horizon,
    # k_theta's hidden units, population, sigma, outer lr, outer steps, fitness / validation
    # prompts per family and samples.
    "smoke": dict(rlhf="smoke", rm_steps=8, rl_batch=4, k=2, epochs=1, rl_lr=1e-2, horizon=2,
                  hidden=4, population=2, sigma=0.5, optimizer="adam", lr=0.1, steps=2,
                  eval=2, ckpt=1,
                  fitness=(2, 2), valid=(2, 2), members=0, final_runs=2),
    # Measured on 2 CPU cores: with the pipeline's RL rate (1e-4) 15 RLOO steps barely move
    # the policy, and a run of 8 outer steps left the gold score of r_theta's policy equal to
    # the reward model's (0.393 both). At 1e-3 RLOO on the reward model over-optimises it within
    # the horizon (gold 0.52 -> 0.34), and a reward that damps the score (k = -0.9 s) keeps the
    # gold at 0.54: room for theta to help. One hidden unit: 6 parameters, so that 4 antithetic
    # pairs estimate the ES gradient far better than over 21.
    # Outer sgd, not adam: at init only w1 changes the RL run (k = w1 tanh(...); b1 is a
    # constant that RLOO's baselines cancel), and adam moved the other coordinates as fast as
    # w1 on noise alone: b0 drifted to -2.2, saturating tanh, and r_theta ended a constant
    # offset of the score (gold 0.336, as on the reward model). With sgd: gold 0.328 against
    # the reward model's 0.336: 4 antithetic pairs scored on 96 samples were mostly noise.
    # Now 12 pairs, each member scored on 128 samples of the same prompts and keys (common
    # random numbers), 10 outer steps, and 5 runs of each reward in the final comparison.
    # Members one at a time (members_per_program=1): on 2 CPU cores a vmapped population
    # trained no faster per member (5.5 s against 5.0 s measured), so only accelerators gain.
    "tiny": dict(rlhf="words", rm_steps=150, rl_batch=8, k=4, epochs=2, rl_lr=1e-3,
                 horizon=15, hidden=1, population=24, sigma=1.5, optimizer="sgd", lr=4.0,
                 steps=10, eval=5, ckpt=2, fitness=(64, 2), valid=(64, 2), members=1,
                 final_runs=5),
}


def _prompts(prompts_per_family: int, samples_per_prompt: int) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict()
    out.prompts_per_family = prompts_per_family
    out.samples_per_prompt = samples_per_prompt
    return out


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of configs/meta_train_reward.py; choose one of "
                         f"{sorted(VARIANTS)}")
    v = VARIANTS[arg]
    config = ml_collections.ConfigDict()
    config.variant = arg
    config.seed = 0

    # The RLHF pipeline's settings: SFT policy (rlhf.sft_from, required), labeler, reward model,
    # and the RL step of the inner runs (rlhf.rl: batch, K, epochs, KL coefficient, optimizer).
    config.rlhf = rlhf.get_config(v["rlhf"])
    config.rlhf.algorithms = ("rloo",)
    config.rlhf.reward_model.train.num_steps = v["rm_steps"]
    config.rlhf.reward_model.train.eval_every = v["rm_steps"]
    config.rlhf.reward_model.train.checkpoint_every = v["rm_steps"]
    config.rlhf.rl.global_batch_size = v["rl_batch"]
    config.rlhf.rl.samples_per_prompt = v["k"]
    config.rlhf.rl.epochs = v["epochs"]
    config.rlhf.rl.minibatches = 1
    # The inner runs' RL rate, constant after the pipeline's warm-up (smoke: none, so that two
    # inner steps move the policy and members score apart).
    config.rlhf.rl.optimizer = optimizers.adamw(v["rl_lr"], 0 if arg == "smoke" else 5,
                                                weight_decay=0.0)
    config.rlhf.rl.optimizer.min_lr_ratio = 1.0
    if arg == "tiny":  # The README's length-biased labeler: RL on its reward model hacks it.
        config.rlhf.preferences.length_bias = 1.0
        config.rlhf.preferences.length_scale = 8.0
    # An RLHF workdir whose preference pairs and reward model to reuse (the same settings);
    # empty: WORKDIR/rlhf.
    config.rlhf_workdir = ""

    config.reward = ml_collections.ConfigDict()
    config.reward.hidden = v["hidden"]  # k_theta's hidden units: 3 H + H + H + 1 parameters.

    config.inner = ml_collections.ConfigDict()
    config.inner.algorithm = "rloo"  # or ppo, grpo
    config.inner.horizon = v["horizon"]  # RL steps of every inner run (full horizon).
    # Members trained side by side in one vmapped program (0: the whole population).
    config.inner.members_per_program = v["members"]

    # Held-out prompts whose samples' gold score is each member's fitness, and the fixed ones
    # of the meta-validation runs (theta against the reward model's score).
    config.fitness = _prompts(*v["fitness"])
    config.meta_valid = _prompts(*v["valid"])

    config.estimator = ml_collections.ConfigDict()
    config.estimator.strategy = "open_es"  # or snes, cma_es
    config.estimator.population = v["population"]  # antithetic pairs: even
    # k_theta's output is w1 . tanh(...): a unit-scale sigma lets one perturbation move the
    # reward by as much as the reward model's spread between samples (about 0.1-1).
    config.estimator.sigma = v["sigma"]

    config.outer = ml_collections.ConfigDict()
    config.outer.optimizer = v["optimizer"]  # 'sgd' or 'adam' on the ES step
    config.outer.lr = v["lr"]
    config.outer.grad_clip = 10.0
    config.outer.num_steps = v["steps"]
    config.outer.eval_every = v["eval"]  # Every step logs the population's figures.
    config.outer.checkpoint_every = v["ckpt"]
    config.outer.keep_checkpoints = 2

    # The hand-set baseline of the final comparison: RL on (1 - damping) x the reward model's
    # score (learned.damping_reward), which the KL penalty then holds nearer the SFT policy.
    config.baseline = ml_collections.ConfigDict({"damping": 0.9})
    # The final comparison: this many runs of r_theta, the reward model and the damping reward
    # on the same prompts and keys, scored on the meta-validation prompts (paired tests).
    config.final = ml_collections.ConfigDict({"runs": v["final_runs"]})
    return config
