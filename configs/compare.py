"""The main job: objectives compared end to end (experiments/compare_objectives.py).

  python -m experiments.compare_objectives --config=configs/compare.py:tiny --workdir=/tmp/cmp

One pre-training run (cached under `cache_dir`, keyed by `pretrain` and the code and data
that build it), then for each objective x noise kind x seed a fine-tuning run from that
checkpoint with the same step budget, scored on the clean test split of `families` (test
inputs of families that no arm gives a meta role: the run refuses one), then the report.

Objectives (`objectives`: arms of the table in learned_loss/studies/arms.py, `arms.TABLE`;
run in this order):
  token level, trained on the noisy demonstrations (learned_loss/studies/noisy_demonstrations.py):
    mle, mle_clean (the same inputs without corruption: the headroom's top; required),
    mle_clean_valid (MLE plus the clean validation examples), mle_2x (twice the steps),
    mle_early_stop, loss_truncation, gce, sce, bootstrap (tuned on the tuning families),
    learned_tbptt and learned_es (the learned token loss meta-trained offline with TBPTT or
    antithetic ES on short runs), learned_pes (PES over whole runs, with the row-history
    features), learned_rows (the same with one weight per row and the run's progress):
    `meta.<name>`, or the artifact at `artifacts.<name>`,
    learned_online (Meta-Weight-Net-style, on the clean validation examples).
  RLHF, from the MLE model of the same noise kind and seed as the SFT policy
  (learned_loss/rlhf/pipeline.py, settings in `rlhf`):
    ppo, rloo, dpo, learned_preference (DPO with the meta-trained preference loss),
    learned_reward (RLOO on the meta-trained r_theta, meta-trained on its own families).
  mle_gold_pairs: MLE on the noisy demonstrations plus the gold answers inside the preference
    pairs (the clean data a preference arm sees).

Variants: `smoke` (seconds; tests: mle, mle_clean and loss_truncation), `tiny` (`make demo`:
mle, mle_clean, mle_clean_valid, loss_truncation and learned_tbptt; 3 seeds, 30% swapped
answers), `swap50` (the learned objectives' regime: the token-level arms, 50% swapped answers
and off-by-one answers, 10 seeds x 3 meta seeds), `paper` (every objective, four noise kinds,
5 seeds).
"""

import ml_collections

from configs import meta_preference, meta_train, meta_train_reward, models, pretrain, rlhf
from configs import noisy_demonstrations as noisy
from learned_loss.studies import arms, sweep

# The token-level arms: MLE and its controls, the tuned hand-made baselines and the learned
# token losses (offline over whole runs, per token and per row, and online).
REGIME_ARMS = ("mle", "mle_clean", "mle_clean_valid", "mle_early_stop", "loss_truncation", "gce",
               "sce", "bootstrap", "learned_pes", "learned_rows", "learned_online")

VARIANTS = {
    # objectives, noise kinds, seeds, fine-tuning steps, examples per family, families,
    # pre-training steps, meta-training variant and outer steps, RLHF variant, curve points.
    "smoke": dict(objectives=("mle", "mle_clean", "loss_truncation"),
                  noises=("swap30",), seeds=2, steps=8, examples=40,
                  families=noisy.TRANSFER_FAMILIES[:2], pretrain_steps=6, meta="smoke",
                  meta_steps=2, rlhf="smoke", per_family=4, curve=2),
    "tiny": dict(objectives=("mle", "mle_clean", "mle_clean_valid", "loss_truncation",
                             "learned_tbptt"),
                 noises=("swap30",), seeds=3, steps=200, examples=300,
                 families=noisy.TRANSFER_FAMILIES, pretrain_steps=200, meta="tiny",
                 meta_steps=8, rlhf="smoke", per_family=20, curve=2),
    # The learned objectives' regime (README): 50% swapped answers and one systematic
    # corruption, the token-level arms only, 10 seeds crossed with 3 meta-training seeds.
    "swap50": dict(objectives=REGIME_ARMS, noises=("swap50", "off_by_one"), seeds=10, steps=800,
                   examples=500, families=noisy.TRANSFER_FAMILIES, pretrain_steps=600,
                   meta="tiny", meta_steps=150, rlhf="smoke", per_family=50, curve=4,
                   meta_seeds=3),
    "paper": dict(objectives=arms.ARMS, noises=tuple(noisy.NOISES), seeds=5, steps=800,
                  examples=500, families=noisy.TRANSFER_FAMILIES, pretrain_steps=600,
                  meta="tiny", meta_steps=150, rlhf="easy", per_family=50, curve=4),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of configs/compare.py; choose one of "
                         f"{sorted(VARIANTS)}")
    v = VARIANTS[arg]
    seq_len = 48
    config = ml_collections.ConfigDict()
    config.variant = arg
    config.objectives = v["objectives"]
    config.seeds = v["seeds"]  # Fine-tuning seeds: each resamples the data (the paired unit).
    # Artifacts of each learned arm, meta-trained with seeds meta.NAME.seed + 0 .. meta_seeds-1;
    # each is crossed with every fine-tuning seed, and the report shows their spread.
    config.meta_seeds = v.get("meta_seeds", 1)
    config.noises = {k: noisy.NOISES[k] for k in v["noises"]}
    # The noise kinds to run, in this order (a ConfigDict iterates its keys sorted).
    config.noise_order = tuple(v["noises"])
    config.families = v["families"]

    # Fine-tuning: every objective starts from the pre-trained model and takes `steps` steps
    # (mle_2x twice; the RLHF objectives take theirs after the MLE model's).
    noisy.fine_tuning(config, arg, steps=v["steps"], examples=v["examples"], seq_len=seq_len)

    # Pre-training (a configs/pretrain.py config; its model must be `model`). Its checkpoint
    # is kept in CACHE/pretrain-KEY and reused by every compare run with the same settings,
    # code and corpus (learned_loss/studies/compare.py's pretrain_key).
    config.cache_dir = ""  # Empty: $LEARNED_LOSS_CACHE or ~/.cache/learned_loss.
    model = models.model_config("nano", max_len=seq_len)
    model.update(config.model.to_dict())
    config.pretrain = pretrain.cached("smoke" if arg == "smoke" else "tiny", model, seq_len,
                                      v["pretrain_steps"])

    # Meta-training of the learned objectives, each in WORKDIR/meta/NAME, skipped when
    # artifacts.NAME names a finished artifact instead.
    config.artifacts = {name: "" for name in arms.META_TRAINED}
    config.meta = ml_collections.ConfigDict()
    # The token losses are meta-trained for fine-tuning the pre-trained model: their inner
    # runs start from its checkpoint (inner.init_from, set by the run).
    whole_runs = {"learned_pes": "swap50", "learned_rows": "swap50_rows"}
    for name, estimator in (("learned_tbptt", "tbptt"), ("learned_es", "es"),
                            ("learned_pes", "pes"), ("learned_rows", "pes")):
        # learned_pes, learned_rows: configs/meta_train.py's swap50 and swap50_rows variants
        # (PES over whole runs, the row-history features; one weight per row); `smoke` keeps
        # the smoke variant's seconds-long runs, with the rows variant's loss.
        m = meta_train.get_config(whole_runs[name] if name in whole_runs and arg != "smoke"
                                  else v["meta"])
        if name == "learned_rows" and arg == "smoke":
            m.objective = meta_train.get_config("swap50_rows").objective
        m.model = models.model_config("nano", max_len=seq_len)
        m.model.update(config.model.to_dict())
        m.data.seq_len = seq_len
        m.estimator.name = estimator
        if name in whole_runs:  # Horizons up to the cells' whole run.
            m.estimator.max_horizon = v["steps"]
            m.estimator.min_horizon = min(m.estimator.min_horizon, v["steps"])
            m.meta_valid.horizon = v["steps"]
        if name == "learned_rows":  # 'progress' counts the cells' steps.
            m.objective.run_steps = v["steps"]
        m.outer.num_steps = v["meta_steps"]
        m.outer.eval_every = v["meta_steps"]
        m.outer.checkpoint_every = min(v["meta_steps"], 25)  # A stopped run resumes near.
        m.outer.log_every = 1
        if arg == "tiny" and name not in whole_runs:  # Short inner runs: the demo's budget.
            m.estimator.min_horizon, m.estimator.max_horizon = 20, 60
            m.meta_valid.families = m.meta_valid.families[:2]
            m.meta_valid.horizon = 60
            m.tasks.examples_per_family = 300
            m.outer.sanity_steps = 10
        config.meta[name] = m
    config.meta.learned_preference = meta_preference.get_config(v["meta"])
    config.meta.learned_reward = meta_train_reward.get_config(v["meta"])

    # RLHF objectives (a configs/rlhf.py config; sft_from, families, seed and the algorithm
    # are set per cell).
    config.rlhf = rlhf.get_config(v["rlhf"])

    config.eval = ml_collections.ConfigDict()
    config.eval.per_family = v["per_family"]
    config.eval.batch_size = 100
    config.eval.max_new_tokens = 12
    config.eval.curve_points = v["curve"]  # Evaluations along each token-level run.
    # The report's multiplicity correction over all of its tests: 'holm' or 'bh'.
    config.statistics = ml_collections.ConfigDict({"correction": "holm"})
    _drop_fields_the_run_sets(config)
    return config


def _drop_fields_the_run_sets(config) -> None:
    """Removes the fields of the shared sections that the comparison does not read, because it
    sets them per cell or takes them from elsewhere, so that overriding one is an error (an
    unknown key) instead of being silently ignored: the RLHF stage's SFT policy, seed,
    algorithm, families and folders (per cell), and the meta-training runs' starting points
    (the fine-tuning sections drop their own in configs/noisy_demonstrations.py)."""
    drops = [(config.rlhf, ("sft_from", "shared_dir", "seed", "algorithms", "data")),
             (config.rlhf.tasks, ("families", "label_noise", "noise_kinds")),
             (config.meta.learned_tbptt.inner, ("init_from",)),
             (config.meta.learned_es.inner, ("init_from",)),
             (config.meta.learned_pes.inner, ("init_from",)),
             (config.meta.learned_rows.inner, ("init_from",)),
             (config.meta.learned_reward.rlhf, ("sft_from",))]
    for section, keys in drops:
        for key in keys:
            del section[key]


def get_sweep(arg: str = "tiny") -> list[dict]:
    """`experiments/sweep.py` points: the fine-tuning rate against the fraction of swapped
    answers (does a learned objective's edge over MLE grow with the noise?)."""
    del arg  # The same points for every variant.
    return sweep.product(**{"optimizer.lr": (1e-3, 3e-3), "noises.swap30.rho": (0.1, 0.3, 0.5)})
