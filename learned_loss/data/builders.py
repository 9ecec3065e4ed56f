"""What the package's TFDS builders share: being built by name, the TFDS way.

  import learned_loss.data                          # registers text_corpus, instruction_tasks
  builder = tfds.builder("instruction_tasks", config="easy", data_dir="/tmp/tfds")
  builder.download_and_prepare()

`ByName`, put before `tfds.core.GeneratorBasedBuilder` in a builder's bases, gives it:
  - `config`: one of its BUILDER_CONFIGS by name, or a config object of the user's own knobs;
    an unknown name is an UnknownConfigError naming the choices (TFDS's own error is a
    multi-line ValueError);
  - the data dir of `paths.data_dir` when none is given ($TFDS_DATA_DIR, else the package's
    default), and ArrayRecord files, which TFDS writes and reads without TensorFlow;
  - in `download_and_prepare`, a check that a dataset already prepared was built from what its
    config describes now. A named config's directory is named by the config, not by its
    content (task generators, corpus files), so it can go stale: that is a StaleDatasetError
    naming the directory to delete. Content-keyed names ('h' + a hash, what the `build_*`
    functions use) cannot go stale.

A builder using it defines `content_name()`: the content-keyed config name of what its config
describes now; it stores that name under `metadata[CONTENT_NAME]` when it writes.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from learned_loss.core import errors
from learned_loss.data import paths

CONTENT_NAME = "content_name"  # The metadata field holding what a dataset was built from.
FILE_FORMAT = "array_record"


class UnknownConfigError(errors.UserError):
    """A config name that is not one of a builder's BUILDER_CONFIGS."""


class StaleDatasetError(errors.UserError):
    """A prepared dataset built from other content than its config describes now."""


def check_config_name(builder_cls: Any, config: Any) -> None:
    """UnknownConfigError if `config` is a name ('name' or 'name:version') that is not one of
    `builder_cls.BUILDER_CONFIGS`; a config object or None passes."""
    if not isinstance(config, str):
        return
    known = [c.name for c in builder_cls.BUILDER_CONFIGS]
    name = config.split(":")[0]
    if name not in known:
        kind = type(builder_cls.BUILDER_CONFIGS[0]).__name__
        raise UnknownConfigError(f"{builder_cls.name} has no config {name!r}; choose one of "
                                 f"{known}, or pass your own knobs as {kind}(...)")


class ByName:
    """Mixin of the package's builders (see module docstring)."""

    def __init__(self, *, config: Any = None, data_dir: Any = None, file_format: Any = None,
                 **kwargs: Any):
        check_config_name(type(self), config)
        super().__init__(config=config,
                         data_dir=paths.data_dir(os.fspath(data_dir) if data_dir else ""),
                         file_format=file_format or FILE_FORMAT, **kwargs)

    def content_name(self) -> str:
        """The content-keyed config name of what this builder's config describes now."""
        raise NotImplementedError

    def check_current(self) -> None:
        """StaleDatasetError if the prepared dataset was built from other content. A dataset
        written before CONTENT_NAME was stored carries its content in its config name."""
        stored = self.info.metadata.get(CONTENT_NAME, self.builder_config.name)
        now = self.content_name()
        if stored != now:
            raise StaleDatasetError(
                f"{self.name} dataset at {self.data_dir} was built from other content "
                f"({stored}, now {now}); delete that directory (tfds build: --overwrite) and "
                "build again")

    def download_and_prepare(self, **kwargs: Any) -> None:
        """TFDS's download_and_prepare, after checking that a prepared dataset is current."""
        if self.is_prepared():
            self.check_current()
        super().download_and_prepare(**kwargs)


def record_splits(builder: Any, counts: Iterable[tuple[str, int]],
                  generate: Callable[[str, int], Sequence[Mapping[str, Any]]]
                  ) -> dict[str, Iterator[Any]]:
    """`_split_generators` of a builder of in-memory records: the records handed to it
    (`builder._records`, split -> records, as `instruction_tasks.prepare_or_reuse` does) or else
    `generate(split, count)` for each (split, count) of `counts`, keyed by `keyed_records`."""
    records = getattr(builder, "_records", None) or {
        split: generate(split, count) for split, count in counts}
    return {split: keyed_records(recs) for split, recs in records.items()}


def keyed_records(records: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, Any]]:
    """(key, record) of each record (`_generate_examples`): 'family/index', unique in a split."""
    for rec in records:
        yield f"{rec['family']}/{rec['index']}", rec
