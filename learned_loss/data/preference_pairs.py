"""Simulated preference labeler and the TFDS builder `preference_pairs`.

The labeler is a Bradley-Terry model (Bradley & Terry, 1952) over the gold
graded score g (`tasks.graded_score`, normalised edit similarity to the gold
answer), with a noise temperature and a length bias so that reward hacking can
be studied:

  P(a preferred to b) = sigmoid((g(a) - g(b) + lambda * (len(a) - len(b)) / L) / tau)

  tau > 0        noise temperature: tau -> 0 always prefers the better completion,
                 large tau labels at random.
  length_bias    lambda: > 0 favours longer completions at equal gold score.
  length_scale   L > 0, the length normaliser in tokens (bytes); the seq_len is a
                 natural choice, so that lambda = 1 trades a full-length
                 difference against a perfect-vs-worthless gold score.

Each record is one labeled pair for one task example:

  family, prompt, gold_answer      the example (see `learned_loss.data.tasks`)
  input_id                         the identity of its input: prompts of one input stay in
                                   one split (`tasks.partition`), here and in every dataset
  chosen, rejected                 the completions as labeled (the labeler's sample)
  g_chosen, g_rejected             their gold graded scores
  p_chosen                         labeler probability that chosen beats rejected
  source_chosen, source_rejected   'gold', 'corrupt:<kind>' (a kind of
                                   `instruction_tasks.CORRUPTIONS`) or 'policy'
  difficulty, phrasing, index      as in `instruction_tasks`

Candidates for an example: its gold answer, one corruption of each kind, and,
if `policy_samples` maps the prompt text to sampled completions, each of those.
Candidates with the same text as an earlier one are dropped (gold first, then
corruptions, then policy samples, so a policy sample that equals the gold answer
is labeled 'gold'). Two distinct candidates are drawn uniformly without
replacement, in random order (a, b), and the labeler picks one. Every split
(validation included) is labeled by the same noisy labeler; g_chosen and
g_rejected give the noiseless gold order.

Prompts do not depend on the labeler or on policy samples: `pair_examples`
gives the exact examples of each split, so a caller can sample completions from
a policy for those prompts first and pass them as `policy_samples`. The
dataset is keyed by a hash of every argument (policy samples included).

  info = build_preference_pairs("/tmp/tfds", families=names, pairs_per_family=500,
                                difficulty=(1, 3), tau=0.1, length_bias=0.5,
                                length_scale=256, seed=0, seq_len=256)
  train = load_split(info, "train")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from learned_loss.core import files
from learned_loss.data import builders, instruction_tasks, tasks
from learned_loss.data.instruction_tasks import DEFAULT_SPLITS
from learned_loss.data.instruction_tasks import decode_record  # noqa: F401 (re-exported)
from learned_loss.data.instruction_tasks import load_split  # noqa: F401 (re-exported)
from learned_loss.data.tasks import Example, partition

SOURCES = ("gold",) + tuple(f"corrupt:{k}" for k in instruction_tasks.CORRUPTIONS) + ("policy",)

# ---- the labeler ----------------------------------------------------------------------------


def _check_labeler(tau: float, length_scale: float) -> None:
    if not tau > 0:
        raise ValueError(f"the labeler's tau must be > 0, got {tau}")
    if not length_scale > 0:
        raise ValueError(f"length_scale must be > 0, got {length_scale}")


def preference_probability(
    g_a: Any, g_b: Any, len_a: Any, len_b: Any, *, tau: float, length_bias: float,
    length_scale: float,
) -> Any:
    """P(a preferred to b) under the simulated labeler (formula in the module docstring).

    Broadcasts over numpy arrays; returns a float for scalar inputs.
    """
    _check_labeler(tau, length_scale)
    margin = np.asarray(g_a, np.float64) - np.asarray(g_b, np.float64)
    margin = margin + length_bias * (np.asarray(len_a, np.float64) - len_b) / length_scale
    p = 0.5 * (1.0 + np.tanh(margin / tau / 2.0))  # = sigmoid(margin / tau), overflow-free
    return float(p) if np.ndim(p) == 0 else p


class LabeledPair(NamedTuple):
    chosen: str
    rejected: str
    g_chosen: float
    g_rejected: float
    p_chosen: float  # labeler probability that chosen beats rejected
    a_chosen: bool  # whether the first completion was chosen


def completion_length(text: str) -> int:
    """Length used by the labeler: UTF-8 bytes (= byte tokens)."""
    return len(text.encode("utf-8"))


def label_pair(
    rng: np.random.Generator, completion_a: str, completion_b: str, gold_answer: str, *,
    tau: float, length_bias: float, length_scale: float,
) -> LabeledPair:
    """One noisy label: a is chosen with probability `preference_probability(a, b)`."""
    g_a = tasks.graded_score(completion_a, gold_answer)
    g_b = tasks.graded_score(completion_b, gold_answer)
    p_a = preference_probability(
        g_a, g_b, completion_length(completion_a), completion_length(completion_b),
        tau=tau, length_bias=length_bias, length_scale=length_scale,
    )
    if rng.random() < p_a:
        return LabeledPair(completion_a, completion_b, g_a, g_b, p_a, True)
    return LabeledPair(completion_b, completion_a, g_b, g_a, 1.0 - p_a, False)


# ---- generation -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    families: tuple[str, ...]
    pairs_per_family: int
    difficulty: tuple[int, int]
    tau: float
    length_bias: float
    length_scale: float
    seed: int
    seq_len: int
    counts: tuple[tuple[str, int], ...]  # (split, pairs per family)


def _examples(seed: int, split: str, name: str, count: int,
              difficulty: tuple[int, int]) -> list[Example]:
    rng = instruction_tasks.stream_rng(seed, split, name, 0)
    return partition.draw_split(name, rng, difficulty, split, count)


def pair_examples(
    *, families: Sequence[str], pairs_per_family: int, difficulty: int | tuple[int, int],
    seed: int, splits: Mapping[str, float] = DEFAULT_SPLITS,
) -> dict[str, list[Example]]:
    """The examples (prompts) each split of `build_preference_pairs` is made of, in order.

    Sample policy completions for `{e.prompt for e in ...}` and pass them as
    `policy_samples`; the prompts do not depend on the labeler knobs.
    """
    names = instruction_tasks.check_families(families)
    span = partition.difficulty_range(difficulty)
    counts = instruction_tasks.split_counts(pairs_per_family, splits, "pairs_per_family")
    return {
        split: [e for name in names for e in _examples(seed, split, name, count, span)]
        for split, count in counts.items()
    }


def _candidates(
    example: Example, rng: np.random.Generator, policy: Sequence[str], split: str
) -> list[tuple[str, str]]:
    """(source, text) candidates, duplicates of an earlier text dropped."""
    found = [("gold", example.answer)]
    for kind in instruction_tasks.CORRUPTIONS:
        text = instruction_tasks.corrupt_answer(example, rng, kind, split)
        if text is not None:
            found.append((f"corrupt:{kind}", text))
    found += [("policy", text) for text in policy]
    seen, out = set(), []
    for source, text in found:
        if text not in seen:
            seen.add(text)
            out.append((source, text))
    return out


def _generate_split(
    spec: _Spec, split: str, count: int, policy_samples: Mapping[str, Sequence[str]]
) -> list[dict[str, Any]]:
    labeler = dict(tau=spec.tau, length_bias=spec.length_bias, length_scale=spec.length_scale)
    records = []
    for name in spec.families:
        rng = instruction_tasks.stream_rng(spec.seed, split, name, 1)
        examples = _examples(spec.seed, split, name, count, spec.difficulty)
        for index, example in enumerate(examples):
            candidates = _candidates(example, rng, policy_samples.get(example.prompt, ()),
                                     split)
            for _, text in candidates:
                tasks.check_fits(dataclasses.replace(example, answer=text), spec.seq_len)
            i, j = rng.choice(len(candidates), size=2, replace=False)
            (source_a, a), (source_b, b) = candidates[i], candidates[j]
            pair = label_pair(rng, a, b, example.answer, **labeler)
            records.append(
                {
                    "family": name,
                    "input_id": example.input_id,
                    "prompt": example.prompt,
                    "chosen": pair.chosen,
                    "rejected": pair.rejected,
                    "gold_answer": example.answer,
                    "g_chosen": pair.g_chosen,
                    "g_rejected": pair.g_rejected,
                    "p_chosen": pair.p_chosen,
                    "source_chosen": source_a if pair.a_chosen else source_b,
                    "source_rejected": source_b if pair.a_chosen else source_a,
                    "difficulty": example.difficulty,
                    "phrasing": example.phrasing,
                    "index": index,
                }
            )
    return records


# ---- TFDS builder ---------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class PreferencePairsConfig(tfds.core.BuilderConfig):
    """The generation knobs; `name` is their hash (see `build_preference_pairs`)."""

    spec: _Spec | None = None
    policy_samples: Mapping[str, Sequence[str]] | None = None


class PreferencePairs(tfds.core.GeneratorBasedBuilder):
    """Simulated-labeler preference pairs over the task suite (see module docstring)."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "2.0.0": "Inputs partitioned into splits; records carry input_id."}

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        f32, i32 = tfds.features.Scalar(np.float32), tfds.features.Scalar(np.int32)
        return tfds.core.DatasetInfo(
            builder=self,
            description="Task-suite completion pairs labeled by a simulated noisy labeler.",
            features=tfds.features.FeaturesDict(
                {
                    "family": text, "input_id": text, "prompt": text, "chosen": text,
                    "rejected": text,
                    "gold_answer": text, "g_chosen": f32, "g_rejected": f32, "p_chosen": f32,
                    "source_chosen": text, "source_rejected": text,
                    "difficulty": i32, "phrasing": i32, "index": i32,
                }
            ),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
        del dl_manager  # Nothing to download.
        cfg = self.builder_config
        return builders.record_splits(self, cfg.spec.counts, lambda split, count: _generate_split(
            cfg.spec, split, count, cfg.policy_samples or {}))

    def _generate_examples(self, records: Sequence[dict[str, Any]]) -> Iterator[Any]:
        return builders.keyed_records(records)


@dataclasses.dataclass(frozen=True)
class PairsInfo:
    """What was built, where it lives, and what it holds.

    Attributes:
        config_name, config_hash, data_dir, builder_dir: as in `TasksInfo`.
        families, pairs_per_family, difficulty (lo, hi), tau, length_bias,
            length_scale, seed, seq_len, splits (name -> fraction): the arguments.
        policy_hash: sha256 hex of the policy samples ('' when none were given).
        num_pairs: records per split.
        num_policy: records per split with a policy completion on either side.
        reused: True if the dataset already existed and was not rebuilt.
    """

    config_name: str
    config_hash: str
    data_dir: str
    builder_dir: str
    families: tuple[str, ...]
    pairs_per_family: int
    difficulty: tuple[int, int]
    tau: float
    length_bias: float
    length_scale: float
    seed: int
    seq_len: int
    splits: Mapping[str, float]
    policy_hash: str
    num_pairs: Mapping[str, int]
    num_policy: Mapping[str, int]
    reused: bool

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable record of the dataset for a run's provenance."""
        out = dataclasses.asdict(self)
        del out["reused"]
        return out


def _policy_hash(policy_samples: Mapping[str, Sequence[str]] | None) -> str:
    if not policy_samples:
        return ""
    items = sorted((str(k), [str(s) for s in v]) for k, v in policy_samples.items())
    return instruction_tasks.config_hash({"policy_samples": items})


def pairs_spec(families: Sequence[str], *, pairs_per_family: int,
               difficulty: int | tuple[int, int], tau: float, length_bias: float,
               length_scale: float, seed: int, seq_len: int,
               splits: Mapping[str, float] = DEFAULT_SPLITS) -> _Spec:
    """The checked knobs of a pairs dataset (`build_preference_pairs`'s arguments but data_dir
    and the policy's samples)."""
    names = instruction_tasks.check_families(families)
    _check_labeler(tau, length_scale)
    if seed < 0 or seq_len < 1:
        raise ValueError(f"seed must be >= 0 and seq_len >= 1, got {seed}, {seq_len}")
    counts = instruction_tasks.split_counts(pairs_per_family, splits, "pairs_per_family")
    return _Spec(names, int(pairs_per_family), partition.difficulty_range(difficulty),
                 float(tau), float(length_bias), float(length_scale), int(seed), int(seq_len),
                 tuple(counts.items()))


def generate(spec: _Spec, policy_samples: Mapping[str, Sequence[str]] | None = None
             ) -> dict[str, list[dict[str, Any]]]:
    """Every split's records, in memory (what the builder writes)."""
    return {split: _generate_split(spec, split, n, policy_samples or {})
            for split, n in spec.counts}


def build_preference_pairs(
    data_dir: str,
    *,
    families: Sequence[str],
    pairs_per_family: int,
    difficulty: int | tuple[int, int],
    tau: float,
    length_bias: float,
    length_scale: float,
    seed: int,
    seq_len: int,
    policy_samples: Mapping[str, Sequence[str]] | None = None,
    splits: Mapping[str, float] = DEFAULT_SPLITS,
) -> PairsInfo:
    """Builds the `preference_pairs` dataset for these knobs, or reuses it if present.

    Args:
        data_dir: TFDS data_dir to write the dataset under.
        families: task family names; exactly these are built.
        pairs_per_family: pairs per family over all splits.
        difficulty: one difficulty, or (lo, hi) drawn uniformly per example.
        tau, length_bias, length_scale: the labeler (module docstring).
        seed: non-negative int.
        seq_len: prompt + any candidate completion must fit seq_len + 1 tokens.
        policy_samples: prompt text -> sampled completions (see `pair_examples`).
        splits: split name -> fraction of pairs_per_family.

    Raises:
        TaskError: unknown or repeated family, or a candidate longer than seq_len.
        ValueError: a knob out of range.
    """
    names = instruction_tasks.check_families(families)
    spec = pairs_spec(names, pairs_per_family=pairs_per_family, difficulty=difficulty, tau=tau,
                      length_bias=length_bias, length_scale=length_scale, seed=seed,
                      seq_len=seq_len, splits=splits)
    policy = {str(k): tuple(str(s) for s in v) for k, v in (policy_samples or {}).items()}
    policy_hash = _policy_hash(policy)
    hash_hex = instruction_tasks.dataset_key(
        dict(dataclasses.asdict(spec), policy=policy_hash), names)
    records = generate(spec, policy)

    config = PreferencePairsConfig(name=f"h{hash_hex[:16]}", description=str(spec), spec=spec,
                                   policy_samples=policy)
    builder = PreferencePairs(config=config, data_dir=data_dir)
    reused = instruction_tasks.prepare_or_reuse(builder, records, "pairs")
    return PairsInfo(
        config_name=config.name,
        config_hash=hash_hex,
        data_dir=files.absolute(data_dir),
        builder_dir=str(builder.data_dir),
        families=names,
        pairs_per_family=spec.pairs_per_family,
        difficulty=spec.difficulty,
        tau=spec.tau,
        length_bias=spec.length_bias,
        length_scale=spec.length_scale,
        seed=spec.seed,
        seq_len=spec.seq_len,
        splits=dict(splits),
        policy_hash=policy_hash,
        num_pairs={split: len(recs) for split, recs in records.items()},
        num_policy={
            split: sum("policy" in (r["source_chosen"], r["source_rejected"]) for r in recs)
            for split, recs in records.items()
        },
        reused=reused,
    )
