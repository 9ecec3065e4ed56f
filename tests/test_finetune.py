"""Supervised fine-tuning as a real process: from a pre-training checkpoint, answer-only loss,
resume, preference data from the policy, and held-out families refused."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from configs import finetune as finetune_config
from experiments import finetune
from learned_loss.core import cli
from learned_loss.data import instruction_tasks, preference_pairs, tasks, tokenizer
from tests import runs

PRETRAIN_OVERRIDES = ("--config.train.num_steps=10", "--config.train.checkpoint_every=10")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    """A short smoke pre-training run (nano model): its workdir."""
    workdir = tmp_path_factory.mktemp("pretrain")
    result = runs.run("experiments.pretrain", workdir, "configs/pretrain.py:smoke",
                      f"--config.data.data_dir={data_dir}", *PRETRAIN_OVERRIDES)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_demonstrations_mask_prompt_tokens(data_dir):
    info = instruction_tasks.build_instruction_tasks(
        data_dir, families=("uppercase", "compare"), examples_per_family=10, difficulty=1,
        label_noise=0.0, seed=0, seq_len=64)
    source = instruction_tasks.load_split(info, "train")
    encoded = finetune.encoded_demonstrations(source, 64)
    assert len(encoded) == len(source)
    for i in range(len(encoded)):
        row, record = encoded[i], instruction_tasks.decode_record(source[i])
        sep = int(np.argmax(row["inputs"] == tokenizer.SEP))
        # Loss on answer tokens (and the closing EOS) only: targets after SEP up to EOS.
        assert row["mask"][:sep].sum() == 0
        answer = row["targets"][row["mask"] > 0]
        assert answer[-1] == tokenizer.EOS
        assert tokenizer.decode(answer) == record["answer"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, data_dir, pretrained):
    """A smoke fine-tuning run from the pre-training run: (its workdir, its stderr)."""
    workdir = tmp_path_factory.mktemp("finetune")
    result = runs.run("experiments.finetune", workdir, "configs/finetune.py:smoke",
                      f"--config.data.data_dir={data_dir}", f"--config.init_from={pretrained}")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result.stderr


def test_finetune_from_pretrained_checkpoint(pretrained, finetuned):
    tmp_path, stderr = finetuned
    assert "initialised from checkpoint 10" in stderr
    records = runs.metrics(tmp_path)
    assert records[-1]["step"] == 20 and "valid/exact_match" in records[-1]
    with open(tmp_path / "provenance.json", encoding="utf-8") as f:
        extra = json.load(f)["starts"][0]["extra"]
    assert extra["init_from"] == str(pretrained) and extra["init_step"] == 10
    assert extra["families"] == list(finetune_config.EASY_FAMILIES[:2])
    # Evaluating the fine-tuned policy on held-out families, with KL to its initialisation.
    result = runs.run_module("experiments.evaluate", f"--checkpoint={tmp_path}",
                             "--split=heldout", "--examples_per_family=2",
                             "--max_new_tokens=8")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "eval_heldout.json", encoding="utf-8") as f:
        report = json.load(f)
    heldout = tasks.families_for("heldout", seed=0, meta_valid_fraction=0.15,
                                 heldout_fraction=0.25)
    assert sorted(report["families"]) == sorted(heldout)
    assert report["reference"] == str(pretrained) and report["overall"]["kl_to_reference"] > 0


def test_interrupted_finetune_resumes_to_the_same_metrics(finetuned, data_dir, pretrained,
                                                         tmp_path):
    """A run stopped after its step-10 checkpoint ends where an uninterrupted one does."""
    workdir, _ = finetuned
    resumed = tmp_path / "run"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "20")  # As if it had died before step 20's save.
    result = runs.run("experiments.finetune", resumed, "configs/finetune.py:smoke",
                      f"--config.data.data_dir={data_dir}", f"--config.init_from={pretrained}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from checkpoint 10" in result.stderr
    records = runs.metrics(resumed)
    assert [r["step"] for r in records] == [r["step"] for r in runs.metrics(workdir)]
    assert runs.deterministic(records) == runs.deterministic(runs.metrics(workdir))


def test_preference_pairs_from_policy_samples(finetuned, data_dir, tmp_path):
    workdir, _ = finetuned
    args = (f"--policy={workdir}", "--families=first_char,list_length", "--pairs_per_family=30",
            f"--data_dir={data_dir}", "--samples_per_prompt=3", "--max_new_tokens=24")
    result = runs.run_module("experiments.make_preferences", f"--workdir={tmp_path}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "preference_pairs.json", encoding="utf-8") as f:
        report = json.load(f)
    assert report["policy"] == {"workdir": str(workdir), "step": 20}
    assert report["dataset"]["seq_len"] == 64 and report["dataset"]["policy_hash"]
    info = preference_pairs.build_preference_pairs(
        data_dir, families=("first_char", "list_length"), pairs_per_family=30, difficulty=1,
        tau=0.1, length_bias=0.0, length_scale=64.0, seed=0, seq_len=64)
    records = [preference_pairs.decode_record(r)
               for r in preference_pairs.load_split(info, "train")]
    # Without a policy the same prompts give no policy completions; with one, a 20-step policy's
    # samples are mostly wrong, so they reach the pairs, all within the sequence length.
    assert info.num_policy["train"] == 0 and not info.policy_hash
    train = report["splits"]["train"]
    assert train["pairs"] == len(records) == 54
    assert train["pairs_with_policy"] > 0
    assert train["completions_by_source"]["policy"] >= train["pairs_with_policy"]
    with_policy = preference_pairs.load_split(
        preference_pairs.PairsInfo(**{**report["dataset"], "reused": True}), "train")
    for record in map(preference_pairs.decode_record, with_policy):
        for text in (record["chosen"], record["rejected"]):
            example = tasks.Example(record["family"], record["prompt"], text, 1, 0)
            tasks.check_fits(example, 64)
    # The same flags give the same dataset (and reuse it).
    again = runs.run_module("experiments.make_preferences", f"--workdir={tmp_path / 'again'}",
                            *args)
    assert again.returncode == 0, again.stderr[-3000:]
    with open(tmp_path / "again" / "preference_pairs.json", encoding="utf-8") as f:
        assert json.load(f)["splits"] == report["splits"]


def test_heldout_family_is_refused(data_dir, tmp_path):
    heldout = tasks.families_for("heldout", seed=0, meta_valid_fraction=0.15,
                                 heldout_fraction=0.25)
    # In process (a UserError is one line and exit 2 at every entry point: tests/test_errors.py).
    config = finetune_config.get_config("smoke")
    config.data.data_dir, config.tasks.families = str(data_dir), (heldout[0],)
    with pytest.raises(cli.UserError, match=re.escape(f"['{heldout[0]}'] are held out")):
        finetune.run(config, str(tmp_path))
    # The same refusal of a held-out split.
    config = finetune_config.get_config("smoke")
    config.data.data_dir, config.tasks.families = str(data_dir), ()
    config.tasks.train_split = "heldout"
    with pytest.raises(cli.UserError, match="evaluation only"):
        finetune.run(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_no_training_path_sees_a_heldout_family():
    split = tasks.split_families(0, meta_valid_fraction=0.15, heldout_fraction=0.25)
    for train_split in ("meta_train", "meta_valid"):
        config = finetune_config.get_config("tiny")
        config.tasks.train_split = train_split
        chosen = tasks.roles.resolve(config.tasks, "finetune")
        assert chosen and not set(chosen) & set(split["heldout"])
    for variant in finetune_config.VARIANTS:
        chosen = tasks.roles.resolve(finetune_config.get_config(variant).tasks, "finetune")
        assert not set(chosen) & set(split["heldout"]), variant
