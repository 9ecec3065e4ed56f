"""TFDS builder `instruction_tasks`: demonstrations of the task suite, with label noise.

Each record is one example of a task family (see `learned_loss.data.tasks`):

  family, prompt          the family name and the instruction with its input
  input_id                the identity of the input (`tasks.input_id`): whatever the phrasing,
                          an input lives in one split only (`tasks.partition`)
  answer                  the demonstrated answer: the gold one, or a corruption of it
  gold_answer             what the gold scorer expects
  corrupted, corruption   bool, and '' or one of `NOISE_KINDS`
  difficulty, phrasing    the knobs the example was sampled with
  index                   its position within (split, family); TFDS reorders records on
                          write, so sort by (family, index) where order matters

Label noise (train split only; other splits are always clean so that they
measure the gold task): each example independently, with probability
`label_noise`, carries a corrupted answer, the kind drawn uniformly from the
configured `noise_kinds` (default `DEFAULT_KINDS`, the first three):
  'other_answer'  the gold answer of another input of the same family, difficulty and
                  split; always differs from the gold answer (up to 32 inputs
                  are tried; should none differ, the kind is impossible)
  'truncated'     a strict non-empty prefix of the gold answer, of uniform length
                  1..len-1; the empty string when the gold answer has one character
  'appended'      the gold answer + ' ' + 2..6 random lowercase letters
  'off_by_one'    the gold answer +1 or -1 (sign drawn uniformly) when it is a
                  decimal integer in canonical form ('12', '-3', '0'; not '007',
                  '-0', '1.5'); impossible otherwise. A systematic error: the
                  corrupted answer is as plausible, and as easy to fit, as a gold one,
                  so a high loss does not give it away
  'dropped_last_char'  the gold answer without its last character; impossible
                  when the gold answer has fewer than 2 characters
When the drawn kind is impossible for an example, another configured kind is
drawn uniformly from those left; when every configured kind is impossible, the
example stays clean (corrupted=False). So with e.g. noise_kinds=('off_by_one',)
the effective noise rate is below `label_noise` (zero on families without
integer answers); `TasksInfo.num_corrupted` counts the corrupted records.
Each (split, family) has three independent rng streams (examples, noise coin
flips, corruptions) seeded by (seed, split name, family name): examples do not
depend on the label noise, a larger noise corrupts a superset of the examples,
and adding a family leaves the others' examples unchanged.

Splits: `splits` maps a split name ('train', 'validation' or 'test': the splits
of the input partition) to its fraction of `examples_per_family`, giving
round(examples_per_family * fraction) examples per family in that split. The
train split draws its inputs with replacement; 'validation' and 'test' hold
distinct inputs, and a family whose input space at the requested difficulty is
too small for them is a TaskError naming the family, the difficulty, how many
inputs exist and the fix. No input occurs in two splits, of this dataset or of any
other one built from the task suite (the partition is fixed).

`build_instruction_tasks` keys the dataset by its content: the BuilderConfig name is
a hash of every argument, a fingerprint of the task generators and the partition's
version, so different knobs or generators build a different dataset under `data_dir`
and the same ones reuse it. Examples that do not fit seq_len are a TaskError at build
time, never dropped.

By name, the TFDS way (`builders.ByName`): `config` is one of the presets of
`PRESETS` (the variants of configs/finetune.py: 'smoke', 'easy', 'words', 'tiny', the
default) or an `InstructionTasksConfig` of your own knobs; left unnamed, the latter
is named by its content and builds the very dataset `build_instruction_tasks` builds
for the same knobs. The data dir defaults to `paths.data_dir()`.

No TensorFlow: TFDS writes and reads ArrayRecord without it.

  info = build_instruction_tasks("/tmp/tfds", families=tasks.families_for("meta_train", ...),
                                 examples_per_family=1000, difficulty=(1, 3),
                                 label_noise=0.1, seed=0, seq_len=256,
                                 noise_kinds=("off_by_one", "dropped_last_char"))
  train = load_split(info, "train")        # random access: train[i]['prompt'] (bytes)

  tfds.builder("instruction_tasks", config="easy", data_dir="/tmp/tfds").download_and_prepare()
  tfds build --imports=learned_loss.data instruction_tasks --config=easy --data_dir=/tmp/tfds
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from learned_loss.core import errors, files
from learned_loss.data import builders, tasks
from learned_loss.data.tasks import Example, partition, TaskError

# Every corruption kind, in the order a configured set is put in (so the set, not its order,
# decides the dataset).
NOISE_KINDS: tuple[str, ...] = (
    "other_answer", "truncated", "appended", "off_by_one", "dropped_last_char"
)
# The kinds a corrupted demonstration draws from unless configured otherwise.
DEFAULT_KINDS: tuple[str, ...] = ("other_answer", "truncated", "appended")
# The kinds preference_pairs offers as rejected answers.
CORRUPTIONS: tuple[str, ...] = DEFAULT_KINDS
DEFAULT_SPLITS: Mapping[str, float] = {"train": 0.9, "validation": 0.1}
NOISY_SPLIT = "train"  # the only split that carries label noise
_OTHER_ANSWER_TRIES = 32
_INTEGER = re.compile(r"0|-?[1-9][0-9]*")  # canonical decimal integers only


# ---- label noise ----------------------------------------------------------------------------


class Demonstration(NamedTuple):
    answer: str
    corrupted: bool
    corruption: str  # '' or one of NOISE_KINDS


def check_noise_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """The kinds in NOISE_KINDS order; ValueError if empty, repeated or unknown."""
    names = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in names if k not in NOISE_KINDS]
    if unknown:
        raise errors.UserError(f"unknown noise kinds {unknown}; valid kinds are {NOISE_KINDS}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"noise_kinds must be distinct and non-empty, got {names}")
    return tuple(k for k in NOISE_KINDS if k in names)


def corrupt_answer(example: Example, rng: np.random.Generator, kind: str,
                   split: str = "train") -> str | None:
    """A corrupted answer of the given kind (see module docstring), or None if impossible.

    'other_answer' is impossible when none of 32 other inputs of the family (drawn from
    `split`, the example's own) has a different answer, 'off_by_one' when the answer is not an
    integer, and 'dropped_last_char' when it has fewer than 2 characters. A possible corruption
    always differs from the gold answer.
    """
    gold = example.answer
    if kind == "other_answer":
        for _ in range(_OTHER_ANSWER_TRIES):
            other = partition.draw(example.family, rng, example.difficulty, split).answer
            if other != gold:
                return other
        return None
    if kind == "truncated":
        return gold[: int(rng.integers(1, len(gold)))] if len(gold) > 1 else ""
    if kind == "appended":
        n = int(rng.integers(2, 7))
        return gold + " " + "".join(chr(97 + c) for c in rng.integers(0, 26, size=n))
    if kind == "off_by_one":
        if not _INTEGER.fullmatch(gold):
            return None
        return str(int(gold) + (1 if rng.integers(2) else -1))
    if kind == "dropped_last_char":
        return gold[:-1] if len(gold) >= 2 else None
    raise ValueError(f"corruption kind must be one of {NOISE_KINDS}, got {kind!r}")


def random_corruption(
    example: Example, rng: np.random.Generator, kinds: Sequence[str] = DEFAULT_KINDS,
    split: str = "train",
) -> Demonstration | None:
    """A corruption of a kind drawn uniformly from `kinds`, redrawn among the kinds left
    while the drawn one is impossible; None when all of them are."""
    left = list(kinds)
    while left:
        kind = left.pop(int(rng.integers(len(left))))
        answer = corrupt_answer(example, rng, kind, split)
        if answer is not None:
            return Demonstration(answer, True, kind)
    return None


def demonstrate(
    example: Example,
    flip: float,
    label_noise: float,
    rng: np.random.Generator,
    kinds: Sequence[str] = DEFAULT_KINDS,
    split: str = "train",
) -> Demonstration:
    """The demonstrated answer: corrupted iff flip < label_noise (flip ~ U[0, 1)) and some
    kind in `kinds` is possible for the example."""
    if flip < label_noise:
        shown = random_corruption(example, rng, kinds, split)
        if shown is not None:
            return shown
    return Demonstration(example.answer, False, "")


# ---- shared by the task builders (also used by preference_pairs) ----------------------------


def check_families(families: Sequence[str]) -> tuple[str, ...]:
    names = (families,) if isinstance(families, str) else tuple(families)
    if not names:
        raise TaskError("no task families requested; pass at least one family name")
    if len(set(names)) != len(names):
        raise TaskError(f"task families repeat in {names}")
    for name in names:
        tasks.get_family(name)  # raises TaskError for an unknown name
    return names


def split_counts(per_family: int, splits: Mapping[str, float], label: str) -> dict[str, int]:
    """Examples per family in each split: round(per_family * fraction), each at least 1; the
    split names are those of the input partition."""
    if per_family < 1:
        raise ValueError(f"{label} must be >= 1, got {per_family}")
    if not splits or sum(splits.values()) > 1.0 + 1e-9:
        raise ValueError(f"splits must be non-empty fractions summing to <= 1, got {splits}")
    counts = {}
    for name, fraction in splits.items():
        partition.check_split(name)
        counts[name] = round(per_family * fraction)
        if counts[name] < 1:
            raise ValueError(
                f"split {name!r} would hold {counts[name]} examples per family "
                f"({label}={per_family}, fraction {fraction}); raise {label} or the fraction"
            )
    return counts


def stream_rng(seed: int, split: str, family: str, stream: int) -> np.random.Generator:
    """An independent generator per (seed, split, family, stream)."""
    key = [seed, zlib.crc32(split.encode()), zlib.crc32(family.encode()), stream]
    return np.random.default_rng(key)


def suite_fingerprint(families: Sequence[str]) -> str:
    """Hash of the families' templates and of a few fixed samples: changes if a generator does."""
    digest = hashlib.sha256()
    for name in families:
        fam = tasks.get_family(name)
        rng = np.random.default_rng(0)
        samples = [tasks.sample_example(fam, rng, d) for d in tasks.DIFFICULTIES for _ in "ab"]
        blob = [name, fam.category, list(fam.templates)]
        blob += [[e.prompt, e.answer] for e in samples]
        digest.update(json.dumps(blob).encode())
    return digest.hexdigest()


def config_hash(args: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of a builder's arguments."""
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()


def dataset_key(spec: Mapping[str, Any], families: Sequence[str]) -> str:
    """The cache key of a task-suite dataset: its arguments, the fingerprint of the families'
    generators and the partition's version (`tasks.partition.VERSION`), so that a dataset
    built by other generators or another partition is never reused."""
    return config_hash({"spec": dict(spec), "suite": suite_fingerprint(families),
                        "version": partition.VERSION})


# ---- generation -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    families: tuple[str, ...]
    examples_per_family: int
    difficulty: tuple[int, int]
    label_noise: float
    seed: int
    seq_len: int
    counts: tuple[tuple[str, int], ...]  # (split, examples per family)
    noise_kinds: tuple[str, ...] = DEFAULT_KINDS  # in NOISE_KINDS order


def generate_split(spec: _Spec, split: str, count: int) -> list[dict[str, Any]]:
    """The records of one split (in memory; the builder writes them)."""
    noise = spec.label_noise if split == NOISY_SPLIT else 0.0
    records = []
    for name in spec.families:
        example_rng = stream_rng(spec.seed, split, name, 0)
        flips = stream_rng(spec.seed, split, name, 1).random(count)  # [count]
        corrupt_rng = stream_rng(spec.seed, split, name, 2)
        examples = partition.draw_split(name, example_rng, spec.difficulty, split, count)
        for index, example in enumerate(examples):
            shown = demonstrate(example, flips[index], noise, corrupt_rng, spec.noise_kinds,
                                split)
            tasks.check_fits(example, spec.seq_len)
            tasks.check_fits(dataclasses.replace(example, answer=shown.answer), spec.seq_len)
            records.append(
                {
                    "family": name,
                    "input_id": example.input_id,
                    "prompt": example.prompt,
                    "answer": shown.answer,
                    "gold_answer": example.answer,
                    "corrupted": shown.corrupted,
                    "corruption": shown.corruption,
                    "difficulty": example.difficulty,
                    "phrasing": example.phrasing,
                    "index": index,
                }
            )
    return records


def task_spec(families: Sequence[str], *, examples_per_family: int,
              difficulty: int | tuple[int, int], label_noise: float, seed: int, seq_len: int,
              splits: Mapping[str, float] = DEFAULT_SPLITS,
              noise_kinds: Sequence[str] = DEFAULT_KINDS) -> _Spec:
    """The checked knobs of a dataset (`build_instruction_tasks`'s arguments but data_dir);
    `generate_split(spec, split, count)` for each `spec.counts` gives its records in memory."""
    names = check_families(families)
    kinds = check_noise_kinds(noise_kinds)
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must lie in [0, 1], got {label_noise}")
    if seed < 0 or seq_len < 1:
        raise ValueError(f"seed must be >= 0 and seq_len >= 1, got {seed}, {seq_len}")
    counts = split_counts(examples_per_family, splits, "examples_per_family")
    return _Spec(names, int(examples_per_family), partition.difficulty_range(difficulty),
                 float(label_noise), int(seed), int(seq_len), tuple(counts.items()), kinds)


def content_key(spec: _Spec) -> str:
    """`dataset_key` of a spec: what a dataset of these knobs is keyed by."""
    return dataset_key(dataclasses.asdict(spec), spec.families)


def content_name(spec: _Spec) -> str:
    """The content-keyed BuilderConfig name of a spec: 'h' + 16 hex digits of its key."""
    return f"h{content_key(spec)[:16]}"


# ---- TFDS builder ---------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class InstructionTasksConfig(tfds.core.BuilderConfig):
    """The knobs of one dataset: `build_instruction_tasks`'s arguments but data_dir (see there),
    checked on construction. Left unnamed, it is named by its content (`content_name`), so that
    it builds the very dataset `build_instruction_tasks` builds for the same knobs. Lists stand
    for tuples (`tfds build --config='{"families": ["add"], ...}'` gives JSON)."""

    name: str = ""
    families: Sequence[str] = ()
    examples_per_family: int = 1000
    difficulty: int | Sequence[int] = 1
    label_noise: float = 0.0
    noise_kinds: Sequence[str] = DEFAULT_KINDS
    seed: int = 0
    seq_len: int = 256
    splits: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SPLITS))

    def __post_init__(self):
        spec = self.spec()
        if not self.name:
            self.name = content_name(spec)
            self.description = self.description or str(spec)

    def spec(self) -> _Spec:
        """The checked knobs (TaskError or ValueError names a bad one)."""
        return task_spec(self.families, examples_per_family=self.examples_per_family,
                         difficulty=self.difficulty, label_noise=self.label_noise,
                         seed=self.seed, seq_len=self.seq_len, splits=dict(self.splits),
                         noise_kinds=self.noise_kinds)


# The fine-tuning variants of configs/finetune.py as named datasets, so that `--config=easy`
# builds what `experiments.finetune --config=configs/finetune.py:easy` trains on
# (tests/test_instruction_tasks.py keeps them in step with `sft_args` of each variant).
EASY_FAMILIES = ("count_words", "list_length", "count_digits", "count_vowels")
_SFT_SPLITS = {"train": 0.9, "validation": 0.1}  # configs/finetune.py data.splits


def _preset(name: str, description: str, families: Sequence[str], examples_per_family: int,
            seq_len: int, difficulty: tuple[int, int] = (1, 1)) -> InstructionTasksConfig:
    return InstructionTasksConfig(name=name, description=description, families=families,
                                  examples_per_family=examples_per_family,
                                  difficulty=difficulty, seq_len=seq_len,
                                  splits=dict(_SFT_SPLITS))


PRESETS: tuple[InstructionTasksConfig, ...] = (
    _preset("smoke", "Two easy families, 40 examples each (seconds).", EASY_FAMILIES[:2], 40,
            64),
    _preset("easy", "Four easy families a small model learns from scratch.", EASY_FAMILIES,
            2000, 48),
    _preset("words", "count_words alone.", EASY_FAMILIES[:1], 2000, 48),
    # configs/tasks.py's split (seed 0, 15% meta-valid, 25% held out); difficulty 1-3 because
    # at 1 some families have fewer distinct inputs than the validation split needs.
    _preset("tiny", "Every meta-train family at difficulties 1-3.",
            tasks.families_for("meta_train", seed=0, meta_valid_fraction=0.15,
                               heldout_fraction=0.25), 1000, 160, (1, 3)),
)


class InstructionTasks(builders.ByName, tfds.core.GeneratorBasedBuilder):
    """Task-suite demonstrations with label noise (see module docstring)."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "2.0.0": "Inputs partitioned into splits; records carry input_id."}
    BUILDER_CONFIGS = list(PRESETS)
    DEFAULT_BUILDER_CONFIG_NAME = "tiny"

    def _info(self) -> tfds.core.DatasetInfo:
        # Built by hand, like text_corpus: no builder package metadata files.
        text, i32 = tfds.features.Text(), tfds.features.Scalar(np.int32)
        return tfds.core.DatasetInfo(
            builder=self,
            description="Procedurally generated instruction tasks with label noise.",
            features=tfds.features.FeaturesDict(
                {
                    "family": text, "input_id": text, "prompt": text, "answer": text,
                    "gold_answer": text,
                    "corrupted": tfds.features.Scalar(np.bool_), "corruption": text,
                    "difficulty": i32, "phrasing": i32, "index": i32,
                }
            ),
            metadata=tfds.core.MetadataDict(),
        )

    def content_name(self) -> str:
        return content_name(self.builder_config.spec())

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
        del dl_manager  # Nothing to download.
        spec = self.builder_config.spec()
        self.info.metadata.update({"spec": json.dumps(dataclasses.asdict(spec)),
                                   builders.CONTENT_NAME: content_name(spec)})
        return builders.record_splits(self, spec.counts,
                                      lambda split, count: generate_split(spec, split, count))

    def _generate_examples(self, records: Sequence[dict[str, Any]]) -> Iterator[Any]:
        return builders.keyed_records(records)


@dataclasses.dataclass(frozen=True)
class TasksInfo:
    """What was built, where it lives, and what it holds.

    Attributes:
        config_name: the TFDS BuilderConfig name ('h' + 16 hex digits of config_hash).
        config_hash: sha256 hex of all arguments plus the task-suite fingerprint.
        data_dir: TFDS data_dir the dataset was written under.
        builder_dir: the prepared dataset directory.
        families, examples_per_family, difficulty (lo, hi), label_noise,
            noise_kinds (in NOISE_KINDS order), seed, seq_len,
            splits (name -> fraction): the arguments.
        num_examples: records per split.
        num_corrupted: corrupted records per split (0 outside 'train').
        reused: True if the dataset already existed and was not rebuilt.
    """

    config_name: str
    config_hash: str
    data_dir: str
    builder_dir: str
    families: tuple[str, ...]
    examples_per_family: int
    difficulty: tuple[int, int]
    label_noise: float
    noise_kinds: tuple[str, ...]
    seed: int
    seq_len: int
    splits: Mapping[str, float]
    num_examples: Mapping[str, int]
    num_corrupted: Mapping[str, int]
    reused: bool

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable record of the dataset for a run's provenance."""
        out = dataclasses.asdict(self)
        del out["reused"]
        return out


def prepare_or_reuse(builder: Any, records: Mapping[str, Sequence[Any]], unit: str) -> bool:
    """Writes `records` (split -> records) with a builder whose `_split_generators` reads
    `builder._records`, unless its dataset already exists; then checks every stored split's size
    against them (TaskError names the directory to delete). Returns whether it was reused."""
    reused = builder.data_path.exists()
    if not reused:
        builder._records = records
        builder.download_and_prepare(file_format="array_record")
    for split, recs in records.items():
        stored = builder.info.splits[split].num_examples
        if stored != len(recs):
            raise TaskError(
                f"{builder.name} dataset at {builder.data_dir} holds {stored} {split} "
                f"{unit}, expected {len(recs)}; delete that directory and build again"
            )
    return reused


def sft_args(config, families: Sequence[str]) -> dict[str, Any]:
    """`build_instruction_tasks`'s arguments (but data_dir) of a fine-tuning config
    (configs/finetune.py): its `tasks` knobs, `data.seq_len` and `data.splits` (which must
    hold 'train' and 'validation')."""
    t, d = config.tasks, config.data
    splits = dict(d.splits)
    if not {"train", "validation"} <= set(splits):
        raise TaskError(f"data.splits={splits} needs a 'train' and a 'validation' split (the run "
                        f"trains on one and evaluates on the other); add the missing one")
    return dict(families=tuple(families), examples_per_family=t.examples_per_family,
                difficulty=partition.difficulty_range(t.difficulty), label_noise=t.label_noise,
                seed=t.seed, seq_len=d.seq_len, noise_kinds=tuple(t.noise_kinds), splits=splits)


def build_instruction_tasks(
    data_dir: str,
    *,
    families: Sequence[str],
    examples_per_family: int,
    difficulty: int | tuple[int, int],
    label_noise: float,
    seed: int,
    seq_len: int,
    splits: Mapping[str, float] = DEFAULT_SPLITS,
    noise_kinds: Sequence[str] = DEFAULT_KINDS,
) -> TasksInfo:
    """Builds the `instruction_tasks` dataset for these knobs, or reuses it if present.

    Args:
        data_dir: TFDS data_dir to write the dataset under.
        families: task family names; exactly these are built (nothing else).
        examples_per_family: examples per family over all splits.
        difficulty: one difficulty, or (lo, hi) drawn uniformly per example.
        label_noise: probability in [0, 1] that a train example is corrupted.
        seed: non-negative int.
        seq_len: every example must fit [BOS] prompt [SEP] answer [EOS] in seq_len + 1.
        splits: split name -> fraction of examples_per_family.
        noise_kinds: the corruption kinds a corrupted example draws from (see module
            docstring); their order does not matter.

    Returns:
        TasksInfo describing the prepared dataset.

    Raises:
        TaskError: unknown or repeated family, or an example longer than seq_len.
        ValueError: a knob out of range, or an unknown or repeated noise kind.
    """
    config = InstructionTasksConfig(families=families, examples_per_family=examples_per_family,
                                    difficulty=difficulty, label_noise=label_noise, seed=seed,
                                    seq_len=seq_len, splits=splits, noise_kinds=noise_kinds)
    spec = config.spec()
    records = {split: generate_split(spec, split, count) for split, count in spec.counts}
    builder = InstructionTasks(config=config, data_dir=data_dir)
    reused = prepare_or_reuse(builder, records, "examples")
    return TasksInfo(
        config_name=config.name,
        config_hash=content_key(spec),
        data_dir=files.absolute(data_dir),
        builder_dir=str(builder.data_dir),
        families=spec.families,
        examples_per_family=spec.examples_per_family,
        difficulty=spec.difficulty,
        label_noise=spec.label_noise,
        noise_kinds=spec.noise_kinds,
        seed=spec.seed,
        seq_len=spec.seq_len,
        splits=dict(splits),
        num_examples={split: len(recs) for split, recs in records.items()},
        num_corrupted={split: sum(r["corrupted"] for r in rs) for split, rs in records.items()},
        reused=reused,
    )


def load_split(info: Any, split: str) -> Sequence[Mapping[str, Any]]:
    """Random-access source over one split of a built dataset (TasksInfo or PairsInfo).

    Text fields come back as UTF-8 `bytes` (TFDS's way), numbers as numpy
    scalars; `decode_record` turns a record into plain Python values.
    """
    if split not in info.splits:
        raise ValueError(f"split must be one of {tuple(info.splits)}, got {split!r}")
    return tfds.builder_from_directory(info.builder_dir).as_data_source(split=split)


def decode_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record with bytes -> str, numpy scalars -> bool / int / float."""
    out = {}
    for key, value in record.items():
        if isinstance(value, bytes):
            out[key] = value.decode("utf-8")
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = value
    return out


def to_example(record: Mapping[str, Any], *, gold: bool = False) -> Example:
    """The record as an `Example` whose answer is the demonstrated one (or the gold one)."""
    rec = decode_record(record)
    return Example(
        family=rec["family"],
        prompt=rec["prompt"],
        answer=rec["gold_answer" if gold else "answer"],
        difficulty=int(rec["difficulty"]),
        phrasing=int(rec["phrasing"]),
        input_id=rec.get("input_id", ""),
    )
