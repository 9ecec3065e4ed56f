"""The arms of the objective comparison (learned_loss/studies/compare.py): what each one is, which
families it gives which role, what data it sees and the meta-training compute behind it.

`TABLE` is the one list of arms (name, kind, method, meta-trainer, data, controls, budget); the
configs, the comparison and the report read it. Arms, by how they train (`kind`):
  token level   TOKEN: fine-tuning from the pre-trained model on the noisy demonstrations
                (learned_loss/studies/noisy_demonstrations.py's methods), `mle_clean` on the same
                inputs' gold answers (the top of the headroom); the hand-made ones
                (`token_arms.HAND_MADE`) with their settings tuned on the tuning families
                (learned_loss/studies/tuning.py)
  gold pairs    GOLD_PAIRS: MLE on the noisy demonstrations plus the gold answers that the
                preference arms' train pairs contain: the control that gives MLE the clean data
                a preference arm sees
  RLHF          RLHF: from the MLE model of the same noise kind and seed (its SFT policy):
                pairs -> reward model -> PPO / RLOO, or DPO (learned_loss/rlhf/pipeline.py)
  learned       META_TRAINED: arms whose objective is meta-trained before the grid, on families
                of their own (meta roles), never on the evaluation families

`roles` gives every arm's families by role and refuses, before anything trains, an evaluation
family with a meta role in any arm (`tasks.roles`); `data_seen` and `meta_compute` fill the
report's "data seen per arm" table.
"""

from __future__ import annotations

import dataclasses
import os
import types
from typing import Any, Mapping, Sequence

import numpy as np

from learned_loss.core import files, pretraining, store
from learned_loss.data import preference_pairs, tasks, training_rows

from learned_loss.meta import run as meta_run
from learned_loss.objectives import artifact as artifact_lib
from learned_loss.studies import token_arms



@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm of the comparison: how it trains, what it sees, what it is tested against."""

    name: str
    kind: str  # 'token', 'gold_pairs' or 'rlhf' (module docstring)
    # token and gold_pairs: the token_arms method it fine-tunes with; rlhf: the pipeline's
    # algorithm (learned_loss/rlhf/pipeline.py).
    method: str
    # How its objective is learned: '' (hand-made), 'online' (during fine-tuning), or the
    # meta-training run before the grid: 'tbptt', 'es', 'pes' (learned_loss/meta/run.py),
    # 'preference' (meta/preference_run.py), 'reward' (meta/reward_run.py).
    meta_trainer: str
    data: str  # what it learns from, in words (the report's data-seen table counts it)
    controls: tuple[str, ...] = ()  # arms it is tested against besides the baseline (mle)

    @property
    def budget(self) -> int:
        """Fine-tuning steps in multiples of `config.steps` (RLHF's stages come on top)."""
        return token_arms.BUDGET.get(self.method, 1) if self.kind == "token" else 1


NOISY = "the noisy demonstrations"
TABLE = (
    Arm("mle", "token", "mle", "", NOISY),
    Arm("mle_clean", "token", "mle_clean", "", "the same inputs with their gold answers"),
    Arm("mle_clean_valid", "token", "mle_clean_valid", "",
        f"{NOISY} and the clean validation examples"),
    Arm("mle_2x", "token", "mle_2x", "", f"{NOISY}, for twice the steps"),
    Arm("mle_early_stop", "token", "mle_early_stop", "",
        f"{NOISY}; the clean validation examples choose its stopping step"),
    Arm("loss_truncation", "token", "loss_truncation", "", NOISY),
    Arm("gce", "token", "gce", "", NOISY),
    Arm("sce", "token", "sce", "", NOISY),
    Arm("bootstrap", "token", "bootstrap", "", NOISY),
    Arm("learned_tbptt", "token", "learned_offline", "tbptt",
        f"{NOISY}; its loss meta-trained on families of its own",
        ("mle_clean_valid", "mle_early_stop")),
    Arm("learned_es", "token", "learned_offline", "es",
        f"{NOISY}; its loss meta-trained on families of its own",
        ("mle_clean_valid", "mle_early_stop")),
    Arm("learned_pes", "token", "learned_offline", "pes",
        f"{NOISY}; its loss meta-trained over whole runs on families of its own",
        ("mle_clean_valid", "mle_early_stop")),
    Arm("learned_rows", "token", "learned_offline", "pes",
        f"{NOISY}; one weight per row, meta-trained over whole runs on families of its own",
        ("mle_clean_valid", "mle_early_stop")),
    Arm("learned_online", "token", "learned_online", "online",
        f"{NOISY}, weighted by the clean validation examples",
        ("mle_clean_valid", "mle_early_stop")),
    Arm("mle_gold_pairs", "gold_pairs", "mle", "",
        f"{NOISY} and the gold answers inside the RLHF arms' train pairs"),
    Arm("ppo", "rlhf", "ppo", "", "its SFT policy's data, labelled pairs, RL prompts"),
    Arm("rloo", "rlhf", "rloo", "", "its SFT policy's data, labelled pairs, RL prompts"),
    Arm("dpo", "rlhf", "dpo", "", "its SFT policy's data and labelled pairs",
        ("mle_gold_pairs",)),
    Arm("learned_preference", "rlhf", "dpo", "preference",
        "its SFT policy's data and labelled pairs; its preference loss meta-trained",
        ("dpo", "mle_gold_pairs")),
    Arm("learned_reward", "rlhf", "rloo", "reward",
        "its SFT policy's data and RL prompts; its reward meta-trained on families of its own",
        ("rloo",)),
)
BY_NAME = {arm.name: arm for arm in TABLE}
ARMS = tuple(BY_NAME)
# Views of the table that the comparison's code branches on.
TOKEN = {a.name: a.method for a in TABLE if a.kind == "token"}  # arm -> token_arms method
GOLD_PAIRS = next(a.name for a in TABLE if a.kind == "gold_pairs")
RLHF = {a.name: a.method for a in TABLE if a.kind == "rlhf"}  # arm -> pipeline algorithm
META_TRAINED = tuple(a.name for a in TABLE if a.meta_trainer not in ("", "online"))
# The learned token losses meta-trained before the grid (learned_loss/meta/run.py).
META_TOKEN = tuple(a for a in META_TRAINED if a in TOKEN)
# (a, b): a - b is tested beside every arm against the baseline (the report's pairings).
PAIRINGS = tuple((a.name, control) for a in TABLE for control in a.controls)
ARTIFACT = "artifact"
TIMING = "timing.json"  # seconds a meta-training run took, beside its artifact's folder


def evaluation_families(config) -> tuple[str, ...]:
    """The comparison's evaluation families (`config.families`), resolved for fine-tuning."""
    return tasks.roles.resolve(config.tasks, "finetune", config.families)


def reward_families(config) -> tuple[str, ...]:
    """The learned reward's own families: its RLHF stages, SFT policy, fitness and
    meta-validation (`meta.learned_reward.rlhf.tasks.families`)."""
    return tasks.roles.resolve(config.tasks, "meta_train",
                               config.meta.learned_reward.rlhf.tasks.families)


def meta_seeds(config, arm: str) -> range:
    """The meta-training seeds of an arm: `config.meta_seeds` artifacts for a learned arm (each
    crossed with every fine-tuning seed), one (seed 0) for the others."""
    return range(config.meta_seeds if arm in META_TRAINED else 1)


def meta_dir(workdir: str, name: str, meta_seed: int = 0) -> str:
    """WORKDIR/meta/NAME for meta seed 0, WORKDIR/meta/NAME-mSEED for the others."""
    return os.path.join(workdir, "meta", name + (f"-m{meta_seed}" if meta_seed else ""))


def artifact_path(config, workdir: str, name: str, meta_seed: int = 0) -> str:
    """`artifacts.NAME` when given (one meta seed only), else the artifact meta-trained in the
    workdir."""
    return config.artifacts.get(name, "") or os.path.join(meta_dir(workdir, name, meta_seed),
                                                          ARTIFACT)


def meta_roles(config, workdir: str, name: str, meta_seed: int = 0) -> dict[str, list[str]]:
    """The roles of a learned arm's meta-training, all meta: its artifact's record when the
    artifact exists (given by path, or finished in the workdir), else what its meta-training
    config will use."""
    path = artifact_path(config, workdir, name, meta_seed)
    if files.isdir(path):
        return token_arms.artifact_roles(path)
    if name == "learned_reward":
        families = reward_families(config)
        return tasks.roles.record({"meta_train": families, "fitness": families,
                                   "meta_valid": families})
    return tasks.roles.as_meta(meta_run.role_record(config.meta[name]))


def own_roles(arm: str, families: Sequence[str]) -> dict[str, list[str]]:
    """The task roles an arm gives the evaluation families in the comparison itself."""
    if arm in TOKEN:
        return token_arms.task_roles(TOKEN[arm], families)
    if arm == GOLD_PAIRS or RLHF[arm] == "dpo":
        return tasks.roles.record({"finetune": families, "pairs": families})
    return tasks.roles.record({"finetune": families, "pairs": families,
                               "reward_model": families, "rl_prompts": families})


def roles(config, workdir: str) -> dict[str, dict[str, list[str]]]:
    """Every arm's families by role: its own task roles, the pre-training task mix (shared by
    all) and, for a learned arm, its meta-training's. TaskError when an evaluation family has a
    meta role in any arm (nothing has trained yet when this is called)."""
    families = evaluation_families(config)
    mix = tasks.roles.record({"pretrain_mix": pretraining.mix_families(config.pretrain)})
    out = {}
    for arm in config.objectives:
        parts = [own_roles(arm, families), mix]
        if arm in TOKEN:
            parts.append(token_arms.tuning_roles(config, TOKEN[arm]))
        if arm in META_TRAINED:
            parts += [meta_roles(config, workdir, arm, m) for m in meta_seeds(config, arm)]
        out[arm] = tasks.roles.merge(*parts)
    tasks.roles.refuse_conflicts(out, families)
    return out


# ---- data seen --------------------------------------------------------------------------------


def gold_pair_rows(shared_dir: str, seq_len: int) -> training_rows.Demonstrations:
    """The gold answers inside the train preference pairs of an RLHF stage (one per pair that
    holds the gold answer as chosen or rejected), as clean demonstrations [G, T]."""
    records = [preference_pairs.decode_record(r)
               for r in preference_pairs.load_split(pairs_info(shared_dir), "train")]
    records.sort(key=lambda r: (r["family"], r["index"]))
    rows = [tasks.encode_example(tasks.Example(r["family"], r["prompt"], r["gold_answer"],
                                               r["difficulty"], r["phrasing"], r["input_id"]),
                                 seq_len)
            for r in records if "gold" in (r["source_chosen"], r["source_rejected"])]
    stacked = {k: np.stack([row[k] for row in rows]) for k in training_rows.KEYS}
    return training_rows.Demonstrations(stacked["inputs"], stacked["targets"], stacked["mask"],
                                     np.zeros(len(rows), bool))


def pairs_info(shared_dir: str) -> Any:
    """The preference-pair dataset of an RLHF stage (its preferences.json), for load_split."""
    dataset = files.read_json(os.path.join(shared_dir, "preferences.json"))["dataset"]
    return types.SimpleNamespace(builder_dir=dataset["builder_dir"],
                                 splits=dataset["num_pairs"])


def pair_counts(shared_dir: str) -> dict[str, int]:
    """{'labelled': pairs the labeler was asked about (all splits), 'gold': train pairs holding
    the gold answer}."""
    info = pairs_info(shared_dir)
    train = [preference_pairs.decode_record(r)
             for r in preference_pairs.load_split(info, "train")]
    return {"labelled": int(sum(info.splits.values())),
            "gold": sum("gold" in (r["source_chosen"], r["source_rejected"]) for r in train)}


def rlhf_data_seen(sft_seen: Mapping[str, int], shared_dir: str, tokens: int) -> dict:
    """An RLHF arm's data: its SFT policy's (the MLE cell's), the labelled pairs and the gold
    answers inside the train pairs, and the tokens of SFT and the RLHF stages."""
    counts = pair_counts(shared_dir)
    return dict(sft_seen, gold_answers_in_pairs=counts["gold"], labeler_queries=counts["labelled"],
                tokens=int(sft_seen["tokens"] + tokens))


def meta_compute(config, workdir: str, name: str, meta_seed: int = 0) -> dict[str, Any]:
    """The meta-training behind a learned arm: outer steps, the inner runs' training tokens
    (outer steps x inner runs per step x inner steps x batch x tokens a row), the gold-scored
    prompts of a learned reward's fitness, and the seconds when this workdir timed it."""
    path = artifact_path(config, workdir, name, meta_seed)
    art = artifact_lib.load(path)
    cfg = art.config
    outer = int(art.provenance.get("outer_steps", cfg["outer"]["num_steps"]))
    est = cfg["estimator"]
    if name == "learned_reward":  # Host-side ES: `population` members, antithetic included.
        rl = cfg["rlhf"]["rl"]
        runs = est["population"]
        tokens = (outer * runs * cfg["inner"]["horizon"] * rl["global_batch_size"]
                  * rl["samples_per_prompt"] * cfg["rlhf"]["preferences"]["seq_len"])
        fit = cfg["fitness"]
        families = len(cfg["rlhf"]["tasks"]["families"]) or 1
        out = {"gold_scored_prompts": outer * runs * fit["prompts_per_family"] * families
               * fit["samples_per_prompt"]}
    else:
        # Inner steps per outer step: es and pes unroll every particle of P antithetic pairs K
        # steps, tbptt P particles; full_es trains its P members (pairs included) whole runs.
        if est["name"] == "full_es":
            steps = est["population"] * est["max_horizon"]
        else:
            antithetic = 2 if est["name"] in ("es", "pes") else 1
            steps = est["population"] * antithetic * est["unroll_length"]
        rows = 2 if name == "learned_preference" else 1  # chosen and rejected
        tokens = outer * steps * cfg["inner"]["batch_size"] * rows * cfg["data"]["seq_len"]
        out = {}
    out.update(outer_steps=outer, tokens=int(tokens))
    timing = os.path.join(os.path.dirname(path), TIMING)
    if files.exists(timing):
        out["seconds"] = store.recorded_seconds(timing)
    return out
