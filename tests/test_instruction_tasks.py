"""Tests for learned_loss.data.instruction_tasks (label noise and the `instruction_tasks`
builder)."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import finetune
from learned_loss.data import builders, paths, tasks
from learned_loss.data import instruction_tasks as itasks
from learned_loss.data.tasks import TaskError
from tests import runs

FAMILIES = ("add", "reverse_string", "first_char", "sort_ascending", "json_list")
KNOBS = dict(families=FAMILIES, examples_per_family=40, difficulty=(1, 3), label_noise=0.3,
             seed=0, seq_len=128)


def _records(info, split):
    return _sorted_records(itasks.load_split(info, split))


def _sorted_records(source):
    records = [itasks.decode_record(source[i]) for i in range(len(source))]
    return sorted(records, key=lambda r: (r["family"], r["index"]))


def _builder_records(builder, split):
    return _sorted_records(builder.as_data_source(split=split))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return data_dir, itasks.build_instruction_tasks(data_dir, **KNOBS)


# ---- the corruption sampler, without TFDS ---------------------------------------------------


def _examples(n, seed=0):
    rng = np.random.default_rng(seed)
    names = list(tasks.FAMILIES)
    return [tasks.sample_example(names[i % len(names)], rng, 1 + i % 5) for i in range(n)]


@pytest.mark.parametrize("label_noise", [0.0, 0.1, 0.3, 0.7])
def test_label_noise_rate_matches_the_knob(label_noise):
    examples = _examples(10_000)
    flips = np.random.default_rng(1).random(len(examples))
    rng = np.random.default_rng(2)
    shown = [itasks.demonstrate(e, f, label_noise, rng) for e, f in zip(examples, flips)]
    rate = np.mean([s.corrupted for s in shown])
    assert abs(rate - label_noise) < 0.02
    for example, s in zip(examples, shown):
        assert s.corrupted == (s.answer != example.answer)
        assert s.corrupted == (s.corruption != "")
    if label_noise:
        kinds = {k: sum(s.corruption == k for s in shown) for k in itasks.CORRUPTIONS}
        assert all(count > 0.2 * rate * len(shown) for count in kinds.values()), kinds


def test_each_corruption_kind_has_its_property():
    rng = np.random.default_rng(0)
    seen_empty = False
    for example in _examples(2_000, seed=3):
        gold = example.answer
        other = itasks.corrupt_answer(example, rng, "other_answer")
        if other is not None:
            assert other != gold and other
        truncated = itasks.corrupt_answer(example, rng, "truncated")
        if len(gold) == 1:
            assert truncated == ""
            seen_empty = True
        else:
            assert truncated and gold.startswith(truncated) and len(truncated) < len(gold)
        appended = itasks.corrupt_answer(example, rng, "appended")
        assert appended.startswith(gold + " ") and 3 <= len(appended) - len(gold) <= 7
        assert appended[len(gold) + 1:].isalpha()
    assert seen_empty
    with pytest.raises(ValueError):
        itasks.corrupt_answer(_examples(1)[0], rng, "shuffled")


def test_other_answer_comes_from_the_same_family():
    rng = np.random.default_rng(0)
    example = tasks.sample_example("parity", rng, 2)
    for _ in range(20):
        assert itasks.corrupt_answer(example, rng, "other_answer") in {"even", "odd"} - {
            example.answer
        }


def _with_answer(answer, family="add"):
    return tasks.Example(family=family, prompt="p", answer=answer, difficulty=1, phrasing=0)


def test_off_by_one_moves_integers_by_one_and_nothing_else():
    rng = np.random.default_rng(0)
    for gold in ["12", "-3", "0", "1308702976"]:
        seen = {itasks.corrupt_answer(_with_answer(gold), rng, "off_by_one") for _ in range(40)}
        assert seen == {str(int(gold) - 1), str(int(gold) + 1)}, gold
    for gold in ["abc", "1.5", "12 13", "007", "-0", "+4", "", "0x1f", "\u0663"]:
        assert itasks.corrupt_answer(_with_answer(gold), rng, "off_by_one") is None, gold


def test_dropped_last_char_needs_two_characters():
    rng = np.random.default_rng(0)
    assert itasks.corrupt_answer(_with_answer("hello"), rng, "dropped_last_char") == "hell"
    assert itasks.corrupt_answer(_with_answer("42"), rng, "dropped_last_char") == "4"
    for gold in ["x", "7", ""]:
        assert itasks.corrupt_answer(_with_answer(gold), rng, "dropped_last_char") is None


def test_only_the_configured_kinds_are_drawn():
    kinds = ("off_by_one", "dropped_last_char")
    rng = np.random.default_rng(0)
    shown = [itasks.demonstrate(e, 0.0, 1.0, rng, kinds) for e in _examples(2_000, seed=4)]
    counts = {k: sum(s.corruption == k for s in shown) for k in ("",) + itasks.NOISE_KINDS}
    assert set(k for k, n in counts.items() if n) == {"", *kinds}, counts
    for example, s in zip(_examples(2_000, seed=4), shown):
        assert s.corrupted == (s.answer != example.answer) == (s.corruption != "")
        # Clean only when both kinds are impossible: a one-character non-integer answer.
        assert s.corrupted or (len(example.answer) < 2 and not example.answer.isdigit())
    # Drawn uniformly: on integer answers of two or more characters both kinds are possible.
    both = [s for e, s in zip(_examples(2_000, seed=4), shown)
            if len(e.answer) >= 2 and itasks.corrupt_answer(e, rng, "off_by_one")]
    share = np.mean([s.corruption == "off_by_one" for s in both])
    assert len(both) > 200 and abs(share - 0.5) < 0.1


def test_impossible_everywhere_stays_clean():
    rng = np.random.default_rng(0)
    for answer, kinds in [("abc", ("off_by_one",)), ("x", ("off_by_one", "dropped_last_char"))]:
        shown = itasks.demonstrate(_with_answer(answer), 0.0, 1.0, rng, kinds)
        assert shown == itasks.Demonstration(answer, False, "")
    assert itasks.random_corruption(_with_answer("abc"), rng, ("off_by_one",)) is None
    shown = itasks.demonstrate(_with_answer("abc"), 0.0, 1.0, rng, ("off_by_one", "appended"))
    assert shown.corrupted and shown.corruption == "appended"


def test_noise_kinds_are_checked_and_put_in_canonical_order():
    assert itasks.check_noise_kinds(["dropped_last_char", "off_by_one"]) == (
        "off_by_one", "dropped_last_char")
    assert itasks.check_noise_kinds("off_by_one") == ("off_by_one",)
    with pytest.raises(ValueError, match="valid kinds are .*'off_by_one'.*'dropped_last_char'"):
        itasks.check_noise_kinds(("off_by_one", "shuffled"))
    for bad in [(), ("truncated", "truncated")]:
        with pytest.raises(ValueError, match="noise_kinds"):
            itasks.check_noise_kinds(bad)


# ---- the TFDS builder -----------------------------------------------------------------------


def test_fields_round_trip(built):
    _, info = built
    assert info.num_examples == {"train": 5 * 36, "validation": 5 * 4}
    train = _records(info, "train")
    assert len(train) == info.num_examples["train"]
    assert set(train[0]) == {"family", "input_id", "prompt", "answer", "gold_answer",
                             "corrupted", "corruption", "difficulty", "phrasing", "index"}
    for rec in train:
        assert isinstance(rec["corrupted"], bool) and isinstance(rec["difficulty"], int)
        assert 1 <= rec["difficulty"] <= 3
        fam = tasks.FAMILIES[rec["family"]]
        assert 0 <= rec["phrasing"] < len(fam.templates)
        assert rec["corrupted"] == (rec["answer"] != rec["gold_answer"])
        assert rec["corruption"] in ("",) + itasks.CORRUPTIONS
        assert (rec["corruption"] != "") == rec["corrupted"]
    assert sum(r["corrupted"] for r in train) == info.num_corrupted["train"] > 0
    # The stored records are exactly what the seeded sampler gives, in (family, index) order.
    rng = itasks.stream_rng(0, "train", "add", 0)
    adds = [r for r in train if r["family"] == "add"]
    assert [r["index"] for r in adds] == list(range(36))
    expected = tasks.partition.draw_split("add", rng, (1, 3), "train", 36)
    assert [(r["prompt"], r["gold_answer"], r["input_id"]) for r in adds] == [
        (e.prompt, e.answer, e.input_id) for e in expected]
    assert itasks.to_example(itasks.load_split(info, "train")[0]).family in FAMILIES
    example = itasks.to_example(adds[0], gold=True)
    assert example.answer == adds[0]["gold_answer"] and example.prompt == adds[0]["prompt"]


def test_validation_is_clean_distinct_and_shares_no_input_with_train(built):
    _, info = built
    valid, train = _records(info, "validation"), _records(info, "train")
    assert not any(r["corrupted"] for r in valid) and info.num_corrupted["validation"] == 0
    assert len({r["input_id"] for r in valid}) == len(valid)  # distinct inputs
    assert not tasks.partition.overlap({"train": train, "validation": valid})
    assert {tasks.split_of(r["input_id"]) for r in train} == {"train"}
    assert {tasks.split_of(r["input_id"]) for r in valid} == {"validation"}
    # The identity is the input: re-rendering a record's input in another phrasing keeps it.
    assert all(r["input_id"] for r in train)


def test_same_knobs_reuse_and_other_knobs_rebuild(built):
    data_dir, info = built
    again = itasks.build_instruction_tasks(data_dir, **KNOBS)
    assert again.reused and again.config_name == info.config_name
    assert _records(again, "train") == _records(info, "train")
    other_seed = itasks.build_instruction_tasks(data_dir, **{**KNOBS, "seed": 1})
    assert not other_seed.reused and other_seed.config_name != info.config_name
    assert _records(other_seed, "train") != _records(info, "train")
    # Label noise changes only the demonstrated answers, and a larger noise corrupts a superset.
    noisier = itasks.build_instruction_tasks(data_dir, **{**KNOBS, "label_noise": 0.6})
    assert noisier.config_name != info.config_name
    low, high = _records(info, "train"), _records(noisier, "train")
    assert [r["prompt"] for r in low] == [r["prompt"] for r in high]
    assert {(r["family"], r["index"]) for r in low if r["corrupted"]} <= {
        (r["family"], r["index"]) for r in high if r["corrupted"]
    }
    assert info.provenance()["config_hash"] == info.config_hash


def test_a_dataset_of_other_generators_or_partition_is_not_reused(built, monkeypatch):
    # The cache key holds the partition's version and the generators' fingerprint: a dataset
    # built by older code is never read back as this one.
    data_dir, info = built
    monkeypatch.setattr(tasks.partition, "VERSION", tasks.partition.VERSION + 1)
    other = itasks.build_instruction_tasks(data_dir, **KNOBS)
    assert not other.reused and other.config_name != info.config_name
    monkeypatch.undo()
    add = tasks.FAMILIES["add"]
    changed = dataclasses.replace(add, templates=("Sum: {a} + {b}",) + add.templates[1:])
    monkeypatch.setitem(tasks.FAMILIES, "add", changed)
    rebuilt = itasks.build_instruction_tasks(data_dir, **KNOBS)
    assert not rebuilt.reused and rebuilt.config_name not in (info.config_name,
                                                              other.config_name)


def test_configured_noise_kinds_build_another_dataset(built):
    data_dir, info = built
    # The same set in another order is the default dataset.
    shuffled = itasks.build_instruction_tasks(
        data_dir, **KNOBS, noise_kinds=("appended", "other_answer", "truncated"))
    assert shuffled.reused and shuffled.config_name == info.config_name
    systematic = itasks.build_instruction_tasks(
        data_dir, **{**KNOBS, "label_noise": 0.6}, noise_kinds=("off_by_one",))
    assert systematic.config_name != info.config_name
    assert systematic.noise_kinds == ("off_by_one",)
    train = _records(systematic, "train")
    corrupted = [r for r in train if r["corrupted"]]
    assert len(corrupted) == systematic.num_corrupted["train"] > 0
    assert {r["corruption"] for r in corrupted} == {"off_by_one"}
    # Only integer answers can be moved by one; the other families stay clean.
    assert {r["family"] for r in corrupted} == {"add"}
    for rec in corrupted:
        assert abs(int(rec["answer"]) - int(rec["gold_answer"])) == 1
    # The prompts do not depend on the noise kinds.
    assert [r["prompt"] for r in train] == [r["prompt"] for r in _records(info, "train")]


def test_only_the_requested_families_are_built(built, tmp_path):
    split = tasks.split_families(0, meta_valid_fraction=0.1, heldout_fraction=0.3)
    train_families = split["meta_train"][:3]
    info = itasks.build_instruction_tasks(
        str(tmp_path), families=train_families, examples_per_family=10, difficulty=1,
        label_noise=0.0, seed=0, seq_len=256, splits={"train": 1.0},
    )
    families = {r["family"] for r in _records(info, "train")}
    assert families == set(train_families)
    assert not families & set(split["heldout"])
    assert info.num_examples == {"train": 30}


def test_over_long_examples_fail_the_build(tmp_path):
    with pytest.raises(TaskError, match="repeat_string"):
        itasks.build_instruction_tasks(
            str(tmp_path), families=["repeat_string"], examples_per_family=10, difficulty=5,
            label_noise=0.0, seed=0, seq_len=24,
        )
    assert not (tmp_path / "instruction_tasks").exists()


def test_bad_arguments(tmp_path):
    ok = dict(KNOBS)
    for change, error in [
        ({"families": ["nope"]}, TaskError),
        ({"families": []}, TaskError),
        ({"families": ["add", "add"]}, TaskError),
        ({"label_noise": 1.5}, ValueError),
        ({"difficulty": 6}, ValueError),
        ({"difficulty": (3, 2)}, ValueError),
        ({"examples_per_family": 0}, ValueError),
        ({"examples_per_family": 4}, ValueError),  # validation would be empty
        ({"noise_kinds": ("off_by_one", "swapped")}, ValueError),
    ]:
        with pytest.raises(error):
            itasks.build_instruction_tasks(str(tmp_path), **{**ok, **change})
    with pytest.raises(ValueError):
        itasks.load_split(itasks.build_instruction_tasks(str(tmp_path), **ok), "test")
    with pytest.raises(TaskError, match="split must be one of"):
        itasks.build_instruction_tasks(str(tmp_path), **ok, splits={"train": 0.9, "dev": 0.1})


def test_a_family_too_small_for_its_evaluation_split_is_refused(tmp_path):
    # to_binary at difficulty 1 has 10 inputs (0..9), 1 of them a validation input.
    with pytest.raises(TaskError) as err:
        itasks.build_instruction_tasks(str(tmp_path), families=["to_binary"],
                                       examples_per_family=100, difficulty=1, label_noise=0.0,
                                       seed=0, seq_len=64)
    message = str(err.value)
    assert "to_binary" in message and "difficulty 1" in message and "10 inputs" in message
    assert "difficulty=(1, 2)" in message and "\n" not in message
    assert not (tmp_path / "instruction_tasks").exists()


# ---- by name, the TFDS way ------------------------------------------------------------------


def test_by_name_with_knobs_writes_build_instruction_tasks_records(built, tmp_path):
    _, info = built
    config = itasks.InstructionTasksConfig(**KNOBS)
    assert config.name == info.config_name  # Named by its content, as build_instruction_tasks.
    builder = tfds.builder("instruction_tasks", config=config, data_dir=str(tmp_path))
    builder.download_and_prepare()
    for split in ("train", "validation"):
        assert _builder_records(builder, split) == _records(info, split)
    # build_instruction_tasks finds that dataset and reuses it.
    assert itasks.build_instruction_tasks(str(tmp_path), **KNOBS).reused


@pytest.mark.parametrize("variant", sorted(finetune.VARIANTS))
def test_presets_are_the_finetune_variants(variant):
    config = finetune.get_config(variant)
    families = tasks.roles.resolve(config.tasks, "finetune")
    preset = itasks.InstructionTasks.builder_configs[variant]
    knobs = itasks.InstructionTasksConfig(**itasks.sft_args(config, families))
    assert preset.spec() == knobs.spec()


def test_a_preset_by_name_writes_build_instruction_tasks_records(tmp_path):
    builder = tfds.builder("instruction_tasks", config="smoke", data_dir=str(tmp_path / "a"))
    builder.download_and_prepare()
    assert builder.data_dir.endswith("instruction_tasks/smoke/2.0.0")
    preset = builder.builder_config
    info = itasks.build_instruction_tasks(
        str(tmp_path / "b"), families=preset.families,
        examples_per_family=preset.examples_per_family, difficulty=preset.difficulty,
        label_noise=preset.label_noise, seed=preset.seed, seq_len=preset.seq_len,
        splits=preset.splits, noise_kinds=preset.noise_kinds)
    for split in ("train", "validation"):
        assert _builder_records(builder, split) == _records(info, split)
    assert builder.info.metadata[builders.CONTENT_NAME] == info.config_name
    assert tfds.builder("instruction_tasks").builder_config.name == "tiny"  # The default.


def test_the_tfds_build_command_builds_a_preset(tmp_path):
    done = runs.run_module("experiments.tfds_build", "instruction_tasks", "--config=smoke",
                           f"--data_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    built_by_cli = tfds.builder("instruction_tasks", config="smoke", data_dir=str(tmp_path))
    by_python = tfds.builder("instruction_tasks", config="smoke", data_dir=str(tmp_path / "py"))
    by_python.download_and_prepare()
    assert _builder_records(built_by_cli, "train") == _builder_records(by_python, "train")
    unknown = runs.run_module("experiments.tfds_build", "instruction_tasks", "--config=nope",
                              f"--data_dir={tmp_path}")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1].startswith(
        "error: instruction_tasks has no config 'nope'")


def test_an_unknown_config_name_is_one_line_naming_the_choices(tmp_path):
    for make in (lambda: tfds.builder("instruction_tasks", config="nope", data_dir=str(tmp_path)),
                 lambda: itasks.InstructionTasks(config="nope:2.0.0")):
        with pytest.raises(builders.UnknownConfigError) as err:
            make()
        message = str(err.value)
        assert "no config 'nope'" in message and "'easy'" in message and "\n" not in message
    with pytest.raises(TaskError):  # Knobs are checked when the config is made.
        itasks.InstructionTasksConfig(families=("nope",))


def test_the_data_dir_is_the_config_then_tfds_data_dir_then_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.DEPRECATED_ENV_VAR, raising=False)
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    assert paths.data_dir("") == os.path.expanduser("~/.cache/learned_loss/tfds")
    monkeypatch.setenv(paths.DEPRECATED_ENV_VAR, str(tmp_path / "old"))
    assert paths.data_dir("") == str(tmp_path / "old")  # Deprecated, still read.
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "env"))
    assert paths.data_dir("") == str(tmp_path / "env")
    assert paths.data_dir(str(tmp_path / "configured")) == str(tmp_path / "configured")
    builder = tfds.builder("instruction_tasks", config="smoke")
    assert builder.data_dir.startswith(str(tmp_path / "env"))
    builder.download_and_prepare()
    assert (tmp_path / "env" / "instruction_tasks" / "smoke").is_dir()


def test_a_named_dataset_built_by_other_generators_is_refused(tmp_path, monkeypatch):
    tfds.builder("instruction_tasks", config="smoke", data_dir=str(tmp_path)
                 ).download_and_prepare()
    tfds.builder("instruction_tasks", config="smoke", data_dir=str(tmp_path)
                 ).download_and_prepare()  # Current: reused.
    monkeypatch.setattr(tasks.partition, "VERSION", tasks.partition.VERSION + 1)
    stale = tfds.builder("instruction_tasks", config="smoke", data_dir=str(tmp_path))
    with pytest.raises(builders.StaleDatasetError, match="delete that directory"):
        stale.download_and_prepare()
