"""TFDS builder `text_corpus`: a local directory of text files as an ArrayRecord dataset.

The corpus is every non-empty file under `text_dir` matched by a glob `pattern`
(default `**/*.py`), except paths with a `site-packages` component. The default
directory is the Python standard library source of the running interpreter:
real text that ships with every Python, so nothing is downloaded.

Each example is {'path': path relative to text_dir, 'text': file contents}.
Files are read as bytes and decoded as UTF-8 with errors='replace', so a file
that is not valid UTF-8 is kept (with U+FFFD where bytes were invalid) instead
of being dropped silently.

Splits 'train', 'validation' and 'test' are chosen per file by a stable hash of
its relative path, b = sha1(path) % 1000: b < valid_permille goes to validation,
b >= 1000 - valid_permille to test (as many files), the rest to train. A file
therefore stays in its split when other files are added or removed. Validation
is what a run may read to choose or learn anything (its evaluations, a learned
objective's meta-objective); test is read by no meta-objective, only by the final
scores of the studies.

`build_text_corpus` keys the dataset by its content: the BuilderConfig name holds
the corpus hash (sha256 over the sorted (path, bytes) pairs) and the validation
permille, so a changed directory or split fraction is built afresh under
`data_dir`, and an unchanged one is reused without being rebuilt. Records come back
in TFDS's own order (it shuffles on write); sort by path where order matters.

By name, the TFDS way (`builders.ByName`): `config` is 'stdlib' (the default: the
standard library's `**/*.py`, 2% validation, as configs/pretrain.py:tiny, small and
paper) or 'stdlib_email' (its `email/**/*.py`, 10% validation, as
configs/pretrain.py:smoke), or a `TextCorpusConfig` naming `text_dir`, `pattern` and
`valid_fraction`; left unnamed, the latter is named by its content and builds the
very dataset `build_text_corpus` builds. The data dir defaults to `paths.data_dir()`.

No TensorFlow: TFDS writes and reads ArrayRecord without it.

  info = build_text_corpus(None, "/tmp/tfds")   # the stdlib corpus
  train = load_split(info, "train")             # random access: train[i]['text']

  tfds.builder("text_corpus", config="stdlib", data_dir="/tmp/tfds").download_and_prepare()
  tfds build --imports=learned_loss.data text_corpus --config=stdlib --data_dir=/tmp/tfds
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import sysconfig
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

from learned_loss.core import errors
from learned_loss.core import files as files_lib
from learned_loss.data import builders

SPLITS = ("train", "validation", "test")
_PERMILLE = 1000


class CorpusError(errors.UserError):
    """A text corpus directory that cannot be used; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class CorpusInfo:
    """What was built, where it lives, and what it holds.

    Attributes:
        text_dir: absolute path of the source directory.
        pattern: glob pattern that selected the files.
        valid_fraction: requested fraction of files in the validation split.
        corpus_hash: sha256 hex digest of the corpus (see `corpus_hash`).
        config_name: the TFDS BuilderConfig name (hash prefix + permille).
        data_dir: TFDS data_dir the dataset was written under.
        builder_dir: the prepared dataset directory (data_dir/text_corpus/config/version).
        num_files: number of files (= examples) per split.
        num_bytes: UTF-8 bytes of stored text per split (= byte tokens, before BOS/EOS).
        reused: True if the dataset already existed and was not rebuilt.
    """

    text_dir: str
    pattern: str
    valid_fraction: float
    corpus_hash: str
    config_name: str
    data_dir: str
    builder_dir: str
    num_files: Mapping[str, int]
    num_bytes: Mapping[str, int]
    reused: bool

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable record of the corpus for a run's provenance."""
        return {
            "text_dir": self.text_dir,
            "pattern": self.pattern,
            "valid_fraction": self.valid_fraction,
            "corpus_hash": self.corpus_hash,
            "builder_dir": self.builder_dir,
            "num_files": dict(self.num_files),
            "num_bytes": dict(self.num_bytes),
        }


def default_text_dir() -> str:
    """The standard library source directory of the running interpreter.

    Inside a virtualenv `sysconfig`'s 'stdlib' path already points at the base
    installation; the location of `os.py` is the fallback should it not.
    """
    stdlib = sysconfig.get_paths()["stdlib"]
    if not os.path.isfile(os.path.join(stdlib, "os.py")):
        stdlib = os.path.dirname(os.__file__)
    return os.path.abspath(stdlib)


def _check_dir(text_dir: str) -> pathlib.Path:
    """Returns `text_dir` as an absolute path, or raises CorpusError if unusable."""
    fix = "set --config.data.text_dir to a directory of text files"
    path = pathlib.Path(text_dir).expanduser()
    if not path.exists():
        raise CorpusError(f"text corpus directory {path} does not exist; {fix}")
    if not path.is_dir():
        raise CorpusError(f"text corpus directory {path} is not a directory; {fix}")
    return path.resolve()


def _list_files(root: pathlib.Path, pattern: str) -> list[tuple[str, pathlib.Path]]:
    """Sorted (relative posix path, absolute path) of the matched files."""
    found = []
    for path in root.glob(pattern):
        rel = path.relative_to(root)
        if "site-packages" in rel.parts or not path.is_file():
            continue
        found.append((rel.as_posix(), path))
    return sorted(found)


def _read_corpus(text_dir: str, pattern: str) -> list[tuple[str, bytes]]:
    """Sorted (relative path, file bytes) of the corpus; empty files left out.

    Raises:
        CorpusError: if the directory is unusable or no non-empty file matches.
    """
    root = _check_dir(text_dir)
    corpus = []
    for rel, path in _list_files(root, pattern):
        data = path.read_bytes()
        if data:
            corpus.append((rel, data))
    if not corpus:
        raise CorpusError(
            f"text corpus directory {root} has no non-empty file matching {pattern!r}; "
            "add files or set --config.data.text_dir / --config.data.pattern"
        )
    return corpus


def _hash_corpus(corpus: Sequence[tuple[str, bytes]]) -> str:
    """sha256 over (path, bytes) pairs, each field length-prefixed (unambiguous)."""
    digest = hashlib.sha256()
    for rel, data in corpus:
        for field in (rel.encode("utf-8"), data):
            digest.update(len(field).to_bytes(8, "little"))
            digest.update(field)
    return digest.hexdigest()


def corpus_hash(text_dir: str, pattern: str = "**/*.py") -> str:
    """Content hash of a corpus: sha256 hex over its sorted (relative path, bytes) pairs.

    Empty files are not part of the corpus and do not change the hash.

    Raises:
        CorpusError: if the directory is unusable or no non-empty file matches.
    """
    return _hash_corpus(_read_corpus(text_dir, pattern))


def split_of(rel_path: str, valid_permille: int) -> str:
    """'validation', 'test' or 'train' for a relative path: a stable hash, not the file
    order."""
    bucket = int(hashlib.sha1(rel_path.encode("utf-8")).hexdigest(), 16) % _PERMILLE
    if bucket < valid_permille:
        return "validation"
    return "test" if bucket >= _PERMILLE - valid_permille else "train"


def _to_permille(valid_fraction: float) -> int:
    if not 0.0 < valid_fraction < 0.5:
        raise ValueError(f"valid_fraction must lie in (0, 0.5) (the test split takes as many "
                         f"files again), got {valid_fraction}")
    return round(valid_fraction * _PERMILLE)


def _split_corpus(
    corpus: Sequence[tuple[str, bytes]], valid_permille: int, text_dir: str, valid_fraction: float
) -> dict[str, list[tuple[str, bytes]]]:
    """Assigns each file to a split; raises CorpusError if a split would be empty."""
    splits: dict[str, list[tuple[str, bytes]]] = {name: [] for name in SPLITS}
    for rel, data in corpus:
        splits[split_of(rel, valid_permille)].append((rel, data))
    for name, files in splits.items():
        if not files:
            raise CorpusError(
                f"the {name} split of text corpus {text_dir} would be empty "
                f"({len(corpus)} files, valid_fraction={valid_fraction}); add files "
                "to the directory or "
                + ("lower" if name == "train" else "raise")
                + " --config.data.valid_fraction"
            )
    return splits


def split_texts(text_dir: str | None, pattern: str, valid_fraction: float,
                split: str) -> list[str]:
    """The texts of one split of a corpus, read from the directory (no dataset needed)."""
    permille = _to_permille(valid_fraction)
    text_dir = str(_check_dir(text_dir if text_dir is not None else default_text_dir()))
    return [_decode(data) for rel, data in _read_corpus(text_dir, pattern)
            if split_of(rel, permille) == split]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _config_name(hash_hex: str, valid_permille: int) -> str:
    """The content-keyed BuilderConfig name: corpus hash prefix and validation permille."""
    return f"h{hash_hex[:16]}_valid{valid_permille}"


@dataclasses.dataclass(eq=False)
class TextCorpusConfig(tfds.core.BuilderConfig):
    """Where the text comes from: `text_dir` ('' for `default_text_dir()`), the glob `pattern`
    and `valid_fraction`, as `build_text_corpus` takes them. Left unnamed, it reads and hashes
    the directory and is named by its content. `corpus_hash`, when set, is what the files must
    still hash to when the dataset is written."""

    name: str = ""
    text_dir: str = ""
    pattern: str = "**/*.py"
    valid_fraction: float = 0.02
    corpus_hash: str = ""

    def __post_init__(self):
        permille = _to_permille(self.valid_fraction)
        if not self.name:
            self.corpus_hash = self.corpus_hash or corpus_hash(self.source_dir(), self.pattern)
            self.name = _config_name(self.corpus_hash, permille)

    @property
    def valid_permille(self) -> int:
        return _to_permille(self.valid_fraction)

    def source_dir(self) -> str:
        """The absolute directory read (CorpusError if unusable)."""
        return str(_check_dir(self.text_dir or default_text_dir()))


# The corpora of configs/pretrain.py's variants (text_dir '': the running interpreter's
# standard library), kept in step by tests/test_text_corpus.py.
PRESETS: tuple[TextCorpusConfig, ...] = (
    TextCorpusConfig(name="stdlib", description="The standard library's Python files, 2% "
                     "validation (configs/pretrain.py:tiny, small, paper).",
                     pattern="**/*.py", valid_fraction=0.02),
    TextCorpusConfig(name="stdlib_email", description="The standard library's email package, "
                     "10% validation (configs/pretrain.py:smoke).",
                     pattern="email/**/*.py", valid_fraction=0.1),
)


class TextCorpus(builders.ByName, tfds.core.GeneratorBasedBuilder):
    """A local directory of text files, one example per file (see module docstring)."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "2.0.0": "A test split as large as the validation split."}
    BUILDER_CONFIGS = list(PRESETS)
    DEFAULT_BUILDER_CONFIG_NAME = "stdlib"

    def _info(self) -> tfds.core.DatasetInfo:
        # Built by hand: `dataset_info_from_configs` needs a builder package
        # layout with metadata files, which this module does not have.
        return tfds.core.DatasetInfo(
            builder=self,
            description="Local text files, one example per file.",
            features=tfds.features.FeaturesDict(
                {"path": tfds.features.Text(), "text": tfds.features.Text()}
            ),
            metadata=tfds.core.MetadataDict(),
        )

    def content_name(self) -> str:
        cfg = self.builder_config
        return _config_name(corpus_hash(cfg.source_dir(), cfg.pattern), cfg.valid_permille)

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
        del dl_manager  # Nothing to download.
        cfg = self.builder_config
        text_dir = cfg.source_dir()
        corpus = _read_corpus(text_dir, cfg.pattern)
        found = _hash_corpus(corpus)
        if cfg.corpus_hash and found != cfg.corpus_hash:
            raise CorpusError(
                f"text corpus {text_dir} changed while building (hash {found[:16]}, "
                f"expected {cfg.corpus_hash[:16]}); build again"
            )
        splits = _split_corpus(corpus, cfg.valid_permille, text_dir, cfg.valid_fraction)
        self.info.metadata.update(
            {
                "text_dir": text_dir,
                "pattern": cfg.pattern,
                "corpus_hash": found,
                "valid_permille": cfg.valid_permille,
                builders.CONTENT_NAME: _config_name(found, cfg.valid_permille),
            }
        )
        return {name: self._generate_examples(files) for name, files in splits.items()}

    def _generate_examples(
        self, files: Sequence[tuple[str, bytes]]
    ) -> Iterator[tuple[str, dict[str, str]]]:
        for rel, data in files:
            yield rel, {"path": rel, "text": _decode(data)}


def build_text_corpus(
    text_dir: str | None,
    data_dir: str,
    *,
    pattern: str = "**/*.py",
    valid_fraction: float = 0.02,
) -> CorpusInfo:
    """Builds the `text_corpus` dataset for a directory, or reuses it if unchanged.

    Every call reads and hashes the directory (about a second for the stdlib);
    `download_and_prepare` runs only when no dataset with that hash and split
    fraction exists under `data_dir`.

    Args:
        text_dir: directory of text files; None means `default_text_dir()`.
        data_dir: TFDS data_dir to write the dataset under.
        pattern: glob pattern, relative to `text_dir`, selecting the files.
        valid_fraction: expected fraction of files in the validation split.

    Returns:
        CorpusInfo describing the prepared dataset.

    Raises:
        CorpusError: the directory is missing, not a directory, has no
            non-empty matching file, or a split would be empty.
        ValueError: valid_fraction is not in (0, 1).
    """
    permille = _to_permille(valid_fraction)
    text_dir = str(_check_dir(text_dir if text_dir is not None else default_text_dir()))
    corpus = _read_corpus(text_dir, pattern)
    hash_hex = _hash_corpus(corpus)
    splits = _split_corpus(corpus, permille, text_dir, valid_fraction)

    config = TextCorpusConfig(
        name=_config_name(hash_hex, permille),
        description=f"{pattern} under {text_dir}",
        text_dir=text_dir,
        pattern=pattern,
        valid_fraction=valid_fraction,
        corpus_hash=hash_hex,
    )
    builder = TextCorpus(config=config, data_dir=data_dir)
    reused = builder.data_path.exists()
    if not reused:
        builder.download_and_prepare(file_format="array_record")
    for name, files in splits.items():
        stored = builder.info.splits[name].num_examples
        if stored != len(files):
            raise CorpusError(
                f"text corpus dataset at {builder.data_dir} holds {stored} {name} files, "
                f"expected {len(files)}; delete that directory and build again"
            )
    return CorpusInfo(
        text_dir=text_dir,
        pattern=pattern,
        valid_fraction=valid_fraction,
        corpus_hash=hash_hex,
        config_name=config.name,
        data_dir=files_lib.absolute(data_dir),
        builder_dir=str(builder.data_dir),
        num_files={name: len(files) for name, files in splits.items()},
        num_bytes={
            name: sum(len(_decode(data).encode("utf-8")) for _, data in files)
            for name, files in splits.items()
        },
        reused=reused,
    )


def load_split(info: CorpusInfo, split: str) -> Sequence[Mapping[str, Any]]:
    """Random-access source over one split; records are {'path': bytes, 'text': bytes}.

    Reads the prepared directory only (no builder code, no TensorFlow). TFDS
    returns Text features as UTF-8 `bytes`.

    Args:
        info: returned by `build_text_corpus`.
        split: 'train', 'validation' or 'test'.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    builder = tfds.builder_from_directory(info.builder_dir)
    return builder.as_data_source(split=split)
