"""The roles task families play in a run, resolved in one place and recorded in provenance.

A run uses families in roles of two kinds:

  task roles   the evaluated task itself, on its train or validation inputs (never its test
               inputs, which `partition` keeps out of every training split):
                 finetune          demonstrations a model is fine-tuned on (SFT included)
                 clean_validation  clean validation demonstrations an arm learns from (MLE
                                   given them as extra data; online meta-weighting's look-ahead
                                   batch, whose theta never leaves the run)
                 pairs             preference pairs (DPO, the reward model's data)
                 reward_model      the reward model's training
                 rl_prompts        on-policy RL prompts
  meta roles   what shapes an objective or a model before the task is seen:
                 meta_train        inner runs of meta-training a learned objective
                 meta_valid        meta-validation of a learned objective
                 fitness           the score an outer loop maximises (ES fitness)
                 tuning            choosing any hyper-parameter or baseline setting
                 pretrain_mix      task text mixed into the pre-training corpus

A comparison's evaluation families may have task roles in any arm but no meta role in any arm
(`conflicts`); every run writes its `record` under 'families_by_role' in its provenance, and a
learned objective's artifact carries its meta-training's record, so that a comparison can
check an artifact it is given by path. `resolve` is the one function through which every
training path turns configured families into a role's families (held-out families refused).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from learned_loss.data.tasks.base import TaskError
from learned_loss.data.tasks.splits import split_families, training_families

TASK_ROLES: tuple[str, ...] = ("finetune", "clean_validation", "pairs", "reward_model",
                               "rl_prompts")
META_ROLES: tuple[str, ...] = ("meta_train", "meta_valid", "fitness", "tuning", "pretrain_mix")
ROLES: tuple[str, ...] = TASK_ROLES + META_ROLES
RECORD_KEY = "families_by_role"  # where a run's provenance keeps its record


def check_role(role: str) -> str:
    if role not in ROLES:
        raise TaskError(f"unknown family role {role!r}; roles are {ROLES}")
    return role


def _split_kwargs(task_cfg) -> dict[str, Any]:
    return dict(seed=task_cfg.split_seed, meta_valid_fraction=task_cfg.meta_valid_fraction,
                heldout_fraction=task_cfg.heldout_fraction)


def resolve(task_cfg, role: str, families: Sequence[str] = ()) -> tuple[str, ...]:
    """The families a run gives `role`: `families` when given, else `task_cfg.families`, else
    the families of `task_cfg.train_split`; a held-out family or split is refused for every
    role (`splits.training_families`).

    task_cfg: a configs/tasks.py section (split_seed, meta_valid_fraction, heldout_fraction,
    train_split, families).
    """
    check_role(role)
    chosen = tuple(families) or tuple(task_cfg.get("families", ()))
    return training_families(chosen, task_cfg.train_split, **_split_kwargs(task_cfg))


def heldout(task_cfg) -> tuple[str, ...]:
    """The held-out families of the task split of `task_cfg` (evaluation only)."""
    return split_families(**_split_kwargs(task_cfg))["heldout"]


def record(by_role: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """A run's families by role, checked, as JSON: {role: sorted families}, empty roles
    dropped."""
    out = {}
    for role, families in by_role.items():
        check_role(role)
        if families:
            out[role] = sorted(set(families))
    return dict(sorted(out.items()))


def merge(*records: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The union of several records (an arm's own run and the artifacts it uses)."""
    out: dict[str, set[str]] = {}
    for rec in records:
        for role, families in rec.items():
            out.setdefault(check_role(role), set()).update(families)
    return record(out)


def as_meta(rec: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """A meta-training run's record as the arm that uses its artifact sees it: whatever role a
    family had while the objective was learned (its inner runs' fine-tuning, pairs, prompts),
    it shaped the objective, so task roles become 'meta_train'."""
    out: dict[str, set[str]] = {}
    for role, families in rec.items():
        out.setdefault("meta_train" if check_role(role) in TASK_ROLES else role,
                       set()).update(families)
    return record(out)


def conflicts(arms: Mapping[str, Mapping[str, Sequence[str]]],
              evaluation: Sequence[str]) -> list[tuple[str, str, str]]:
    """(arm, meta role, family) for every evaluation family that an arm gives a meta role."""
    scored = set(evaluation)
    return [(arm, role, family)
            for arm, rec in sorted(arms.items())
            for role, families in sorted(rec.items()) if role in META_ROLES
            for family in sorted(set(families) & scored)]


def refuse_conflicts(arms: Mapping[str, Mapping[str, Sequence[str]]],
                     evaluation: Sequence[str]) -> None:
    """TaskError naming the first arm, role and family when an evaluation family has a meta
    role in any arm (and how many such uses there are in all)."""
    found = conflicts(arms, evaluation)
    if found:
        arm, role, family = found[0]
        more = f" ({len(found) - 1} more such uses)" if len(found) > 1 else ""
        raise TaskError(
            f"arm {arm} gives the evaluation family {family} the meta role {role!r}{more}; "
            f"evaluation families may only have task roles {TASK_ROLES}: meta-train, "
            f"validate and tune on other families, or evaluate on families no arm gives a "
            f"meta role")
