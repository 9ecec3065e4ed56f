"""Held-out inputs are held out: every dataset that every shipped config variant builds has zero
input overlap between its splits, and so do all of a variant's datasets taken together (its
RL prompts, evaluation prompts and pre-training mix included).

Each dataset is generated in memory through the same argument functions the runs call, so a
variant whose families cannot supply the distinct evaluation inputs it asks for fails here
with the builder's own error. Slow-ish (about a minute over all variants): one test per config
file, so the two workers share them.
"""

import collections

import numpy as np
import pytest

from configs import compare, diversity, emergence, finetune, meta_preference, meta_train_reward
from configs import meta_train, noisy_demonstrations as noisy, pretrain, rlhf
from learned_loss.core import pretraining
from learned_loss.data import instruction_tasks, preference_pairs, tasks, training_rows
from learned_loss.meta import preference_run
from learned_loss.meta import run as meta_run
from learned_loss.rlhf import data as rlhf_data
from learned_loss.rlhf import pipeline as rlhf_pipeline
from learned_loss.studies import arms, token_arms
from learned_loss.studies import diversity as diversity_study

RL_ROWS = 64  # RL prompts drawn from each stream (their first rows)


class Collected:
    """Records by split over every dataset of one variant; each dataset checked on its own."""

    def __init__(self):
        self.by_split = collections.defaultdict(list)
        self.datasets = 0

    def add(self, label: str, records_by_split):
        overlap = tasks.partition.overlap(records_by_split)
        assert not overlap, f"{label}: {overlap}"
        for split, records in records_by_split.items():
            wrong = [r["input_id"] for r in records
                     if tasks.partition.split_of(r["input_id"]) != split]
            assert not wrong, f"{label}: {len(wrong)} {split} records of other splits"
            self.by_split[split].extend(records)
        self.datasets += 1

    def check(self):
        overlap = tasks.partition.overlap(self.by_split)
        assert not overlap, overlap
        assert self.datasets > 0


def _records(examples):
    return [{"input_id": e.input_id, "prompt": e.prompt} for e in examples]


def _tasks(out, label, args):
    spec = instruction_tasks.task_spec(**args)
    out.add(label, {s: instruction_tasks.generate_split(spec, s, n) for s, n in spec.counts})


def _pairs(out, label, args):
    """The pairs of the gold answers and corruptions (policy samples come at run time), with
    every candidate checked against seq_len as the builder does."""
    args = dict(args)
    families = args.pop("families")
    out.add(label, preference_pairs.generate(preference_pairs.pairs_spec(families, **args)))


def _rlhf(out, label, config, families):
    p = config.preferences
    _pairs(out, f"{label} pairs", dict(
        rlhf_pipeline.pair_args(config, families), tau=p.tau, length_bias=p.length_bias,
        length_scale=p.length_scale or float(p.seq_len), seq_len=p.seq_len))
    span = tasks.difficulty_range(config.tasks.difficulty)
    train = rlhf_data.PromptStream(families, difficulty=span, seed=config.seed,
                                   global_batch_size=1, width=10_000, kl_coef=0.0)
    valid = rlhf_data.PromptStream(families, difficulty=span, seed=config.seed + 1,
                                   global_batch_size=1, width=10_000, kl_coef=0.0,
                                   split="validation")
    out.add(f"{label} prompts", {"train": _records(train.example(r) for r in range(RL_ROWS)),
                                 "validation": _records(valid.example(r)
                                                        for r in range(RL_ROWS))})


def _meta(out, label, config):
    if config.data.get("source", "tasks") == "text":
        return
    for families in meta_run.meta_families(config):
        if "preferences" in config:
            _pairs(out, label, preference_run.pairs_args(config, families))
        else:
            _tasks(out, label, meta_run.rows_args(config, families))


def _finetune(out, config):
    _tasks(out, "finetune", instruction_tasks.sft_args(
        config, tasks.roles.resolve(config.tasks, "finetune")))


def _noisy(out, config):
    for noise in config.noise_order:
        for family_set in config.set_order:
            for seed in range(config.seeds):
                _tasks(out, f"{family_set}/{noise}/s{seed}",
                       token_arms.data_args(config, family_set, noise, seed))


def _compare(out, config):
    import learned_loss.studies.compare as compare_lib

    view = compare_lib.noisy_view(config)
    families = arms.evaluation_families(config)
    for noise in config.noise_order:
        for seed in range(config.seeds):
            _tasks(out, f"{noise}/s{seed}",
                   token_arms.data_args(view, compare_lib.FAMILY_SET, noise, seed))
            r = compare_lib.rlhf_config(config, "dpo", noise, seed, "/w")
            _rlhf(out, f"rlhf {noise}/s{seed}", r, families)
    for name in arms.META_TRAINED:
        if name in config.objectives and name != "learned_reward":
            _meta(out, name, config.meta[name])
    reward = arms.reward_families(config)
    _rlhf(out, "learned_reward", config.meta.learned_reward.rlhf, reward)
    _mix(out, config.pretrain)


def _mix(out, config):
    docs = pretraining.task_documents(config)
    if docs:  # A document is f"{prompt}\n{answer}".
        out.add("mix", {"train": [{"input_id": d["input_id"], "prompt": d["text"].split("\n")[0]}
                                  for d in docs]})


def _pretrain(out, config):
    config.data.task_mix_per_family = 20  # The shipped variants mix none; check a mix.
    _mix(out, config)


def _diversity(out, config):
    families = diversity_study.train_families(config)
    order = diversity_study.family_order(families, 0)
    rows = training_rows.sample_demonstrations(order[:3], 64, config.data.seq_len,
                                            (config.tasks.difficulty,), 0)
    assert len(rows) == 64
    held = diversity_study.eval_examples(diversity_study.heldout_families(config), config)
    seen = diversity_study.eval_examples(order[:config.eval.seen_families], config)
    out.add("eval", {"test": _records(held + seen)})


def _emergence(out, config):
    families = tasks.roles.resolve(config.tasks, "finetune")
    for split, rows in (("train", 256), ("test", config.eval_rows)):
        demos = training_rows.sample_demonstrations(families, rows, config.data.seq_len,
                                                 tuple(config.difficulties), config.seed, split)
        assert len(demos) == rows


VARIANTS = {
    "finetune": (finetune, _finetune),
    "noisy_demonstrations": (noisy, _noisy),
    "compare": (compare, _compare),
    "meta_train": (meta_train, lambda out, c: _meta(out, "meta", c)),
    "meta_preference": (meta_preference, lambda out, c: _meta(out, "meta", c)),
    "meta_train_reward": (meta_train_reward, lambda out, c: _rlhf(out, "rlhf", c.rlhf,
                                                      rlhf_pipeline.task_families(c.rlhf, {}))),
    "rlhf": (rlhf, lambda out, c: _rlhf(out, "rlhf", c, rlhf_pipeline.task_families(c, {}))),
    "diversity": (diversity, _diversity),
    "emergence": (emergence, _emergence),
    "pretrain": (pretrain, _pretrain),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_builds_disjoint_splits(name):
    module, collect = VARIANTS[name]
    for variant in module.VARIANTS:
        config = module.get_config(variant)
        out = Collected()
        collect(out, config)
        if out.datasets:
            out.check()


def test_a_seed_resamples_inputs_and_corruptions():
    config = noisy.get_config("smoke")
    first, second = (instruction_tasks.task_spec(**token_arms.data_args(config, "transfer",
                                                                         "swap30", s))
                     for s in (0, 1))
    a, b = (instruction_tasks.generate_split(spec, "train", 40) for spec in (first, second))
    assert [r["input_id"] for r in a] != [r["input_id"] for r in b]
    flags = np.array([[r["corrupted"] for r in recs] for recs in (a, b)])
    assert flags.any(axis=1).all() and (flags[0] != flags[1]).any()
