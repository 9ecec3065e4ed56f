"""Tests for learned_loss.data.text_corpus (the `text_corpus` TFDS builder)."""

import hashlib
import os
import pathlib

import pytest
import tensorflow_datasets as tfds

from configs import pretrain
from learned_loss.data import builders, paths, text_corpus
from learned_loss.data.text_corpus import CorpusError

VALID_FRACTION = 0.25


def _write_corpus(root: pathlib.Path) -> dict[str, str]:
    """~20 small .py files plus distractors; returns {relative path: expected text}."""
    expected = {}
    for i in range(18):
        rel = f"pkg{i % 3}/mod_{i}.py" if i % 2 else f"top_{i}.py"
        text = f"# module {i}: ünïcödé ✓\n" + "x = %d\n" % i * (i + 1)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
        expected[rel] = text
    # Not valid UTF-8: kept, with U+FFFD for the bad byte.
    (root / "latin1.py").write_bytes(b"s = 'caf\xe9'\n")
    expected["latin1.py"] = "s = 'caf\ufffd'\n"
    (root / "deep/er/nested.py").parent.mkdir(parents=True)
    (root / "deep/er/nested.py").write_text("pass\n")
    expected["deep/er/nested.py"] = "pass\n"
    # Left out: empty file, site-packages, other extensions, a directory named *.py.
    (root / "empty.py").write_bytes(b"")
    (root / "lib/site-packages/dep").mkdir(parents=True)
    (root / "lib/site-packages/dep/x.py").write_text("ignored = True\n")
    (root / "notes.txt").write_text("not python\n")
    (root / "dir.py").mkdir()
    return expected


def _expected_split(rel: str) -> str:
    bucket = int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 1000
    if bucket < VALID_FRACTION * 1000:
        return "validation"
    return "test" if bucket >= 1000 - VALID_FRACTION * 1000 else "train"


def _read_all(info):
    return [r for split in text_corpus.SPLITS for r in _read_split(info, split)]


def _read_split(info, split):
    source = text_corpus.load_split(info, split)
    records = [source[i] for i in range(len(source))]
    return [(r["path"].decode(), r["text"].decode()) for r in records]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    expected = _write_corpus(src)
    data_dir = tmp_path_factory.mktemp("tfds")
    info = text_corpus.build_text_corpus(str(src), str(data_dir), valid_fraction=VALID_FRACTION)
    return src, expected, data_dir, info


def test_every_file_appears_once_with_its_text(corpus):
    _, expected, _, info = corpus
    seen = _read_all(info)
    assert len(seen) == len(expected) == 20
    assert dict(seen) == expected
    assert not any("site-packages" in path for path, _ in seen)


def test_split_assignment_is_the_path_hash(corpus):
    _, expected, _, info = corpus
    for split in text_corpus.SPLITS:
        paths = sorted(path for path, _ in _read_split(info, split))
        assert paths == sorted(p for p in expected if _expected_split(p) == split)
    assert info.num_files == {
        split: sum(_expected_split(p) == split for p in expected) for split in text_corpus.SPLITS
    }
    assert all(info.num_files[split] > 0 for split in ("train", "validation", "test"))
    assert info.num_bytes == {
        split: sum(len(t.encode()) for p, t in expected.items() if _expected_split(p) == split)
        for split in text_corpus.SPLITS
    }


def test_split_is_stable_when_files_are_added(corpus, tmp_path):
    src, expected, _, info = corpus
    before = {split: {p for p, _ in _read_split(info, split)} for split in text_corpus.SPLITS}
    copy = tmp_path / "copy"
    _write_corpus(copy)
    for i in range(10):
        (copy / f"extra_{i}.py").write_text(f"extra = {i}\n")
    info2 = text_corpus.build_text_corpus(
        str(copy), str(tmp_path / "tfds"), valid_fraction=VALID_FRACTION
    )
    after = {split: {p for p, _ in _read_split(info2, split)} for split in text_corpus.SPLITS}
    for split in text_corpus.SPLITS:
        assert before[split] <= after[split]
    assert info2.corpus_hash != info.corpus_hash


def test_corpus_hash_tracks_content(tmp_path):
    _write_corpus(tmp_path)
    h0 = text_corpus.corpus_hash(str(tmp_path))
    assert len(h0) == 64 and int(h0, 16) >= 0
    assert text_corpus.corpus_hash(str(tmp_path)) == h0
    # Files outside the corpus do not change it.
    (tmp_path / "more_notes.txt").write_text("still not python\n")
    (tmp_path / "empty2.py").write_bytes(b"")
    assert text_corpus.corpus_hash(str(tmp_path)) == h0
    # One changed byte in one file does.
    (tmp_path / "top_0.py").write_text("# module 0: changed\n")
    h1 = text_corpus.corpus_hash(str(tmp_path))
    assert h1 != h0
    # So does a rename with identical content.
    os.rename(tmp_path / "top_0.py", tmp_path / "top_0_renamed.py")
    assert text_corpus.corpus_hash(str(tmp_path)) not in (h0, h1)
    # The pattern selects the corpus.
    assert text_corpus.corpus_hash(str(tmp_path), "*.py") != text_corpus.corpus_hash(str(tmp_path))


def test_unchanged_corpus_is_reused_without_rebuild(corpus):
    src, _, data_dir, info = corpus
    assert not info.reused
    files = sorted(pathlib.Path(info.builder_dir).iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    again = text_corpus.build_text_corpus(str(src), str(data_dir), valid_fraction=VALID_FRACTION)
    assert again.reused
    assert again.builder_dir == info.builder_dir and again.corpus_hash == info.corpus_hash
    assert again.num_files == info.num_files and again.num_bytes == info.num_bytes
    assert sorted(pathlib.Path(info.builder_dir).iterdir()) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_changed_content_or_fraction_builds_a_new_dataset(tmp_path):
    src = tmp_path / "src"
    _write_corpus(src)
    data_dir = str(tmp_path / "tfds")
    first = text_corpus.build_text_corpus(str(src), data_dir, valid_fraction=VALID_FRACTION)
    other_fraction = text_corpus.build_text_corpus(str(src), data_dir, valid_fraction=0.3)
    assert not other_fraction.reused
    assert other_fraction.builder_dir != first.builder_dir
    assert other_fraction.corpus_hash == first.corpus_hash
    (src / "top_0.py").write_text("changed = 1\n")
    changed = text_corpus.build_text_corpus(str(src), data_dir, valid_fraction=VALID_FRACTION)
    assert not changed.reused
    assert changed.corpus_hash != first.corpus_hash
    assert changed.builder_dir != first.builder_dir
    texts = dict(_read_all(changed))
    assert texts["top_0.py"] == "changed = 1\n"
    # The old dataset is still there and still holds the old text.
    old = dict(_read_all(first))
    assert old["top_0.py"].startswith("# module 0")


def _assert_one_line_error(call, *fragments):
    with pytest.raises(CorpusError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert isinstance(err.value, ValueError)


def test_unusable_directories_raise_corpus_error(tmp_path):
    data_dir = str(tmp_path / "tfds")
    missing = tmp_path / "missing"
    _assert_one_line_error(
        lambda: text_corpus.build_text_corpus(str(missing), data_dir),
        str(missing),
        "does not exist",
        "text_dir",
    )
    a_file = tmp_path / "file.py"
    a_file.write_text("x = 1\n")
    _assert_one_line_error(
        lambda: text_corpus.build_text_corpus(str(a_file), data_dir), str(a_file), "not a directory"
    )
    no_match = tmp_path / "no_match"
    no_match.mkdir()
    (no_match / "readme.txt").write_text("text\n")
    (no_match / "empty.py").write_bytes(b"")
    _assert_one_line_error(
        lambda: text_corpus.build_text_corpus(str(no_match), data_dir), str(no_match), "**/*.py"
    )
    _assert_one_line_error(lambda: text_corpus.corpus_hash(str(missing)), str(missing))
    assert not (tmp_path / "tfds").exists()


def test_empty_split_raises_corpus_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "only.py").write_text("x = 1\n")
    # sha1('only.py') % 1000 decides: with one file, one of the splits is empty.
    _assert_one_line_error(
        lambda: text_corpus.build_text_corpus(
            str(src), str(tmp_path / "tfds"), valid_fraction=0.02
        ),
        str(src),
        "valid_fraction",
    )
    for fraction in (0.0, 0.5):  # 0.5: validation and test would leave train nothing
        with pytest.raises(ValueError):
            text_corpus.build_text_corpus(str(src), str(tmp_path / "tfds"),
                                          valid_fraction=fraction)


def test_load_split_rejects_unknown_split(corpus):
    with pytest.raises(ValueError):
        text_corpus.load_split(corpus[3], "dev")


def test_default_text_dir_is_the_stdlib():
    stdlib = text_corpus.default_text_dir()
    assert os.path.isfile(os.path.join(stdlib, "os.py"))
    assert os.path.isfile(os.path.join(stdlib, "json", "decoder.py"))


# ---- by name, the TFDS way ------------------------------------------------------------------


def _builder_files(builder):
    out = []
    for split in text_corpus.SPLITS:
        source = builder.as_data_source(split=split)
        out += sorted((split, r["path"].decode(), r["text"].decode())
                      for r in (source[i] for i in range(len(source))))
    return out


def _info_files(info):
    return [(split, path, text) for split in text_corpus.SPLITS
            for path, text in sorted(_read_split(info, split))]


def test_by_name_with_a_directory_writes_build_text_corpus_records(corpus, tmp_path):
    src, _, _, info = corpus
    config = text_corpus.TextCorpusConfig(text_dir=str(src), valid_fraction=VALID_FRACTION)
    assert config.name == info.config_name  # Named by its content, as build_text_corpus.
    builder = tfds.builder("text_corpus", config=config, data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert _builder_files(builder) == _info_files(info)
    again = text_corpus.build_text_corpus(str(src), str(tmp_path), valid_fraction=VALID_FRACTION)
    assert again.reused


def test_a_preset_by_name_writes_build_text_corpus_records(tmp_path):
    builder = tfds.builder("text_corpus", config="stdlib_email", data_dir=str(tmp_path / "a"))
    builder.download_and_prepare()
    info = text_corpus.build_text_corpus(None, str(tmp_path / "b"), pattern="email/**/*.py",
                                         valid_fraction=0.1)
    assert _builder_files(builder) == _info_files(info)
    assert builder.info.metadata[builders.CONTENT_NAME] == info.config_name
    assert tfds.builder("text_corpus").builder_config.name == "stdlib"  # The default.


@pytest.mark.parametrize("variant", sorted(pretrain.VARIANTS))
def test_presets_cover_the_pretrain_variants(variant):
    data = pretrain.get_config(variant).data
    presets = [(c.text_dir, c.pattern, c.valid_fraction) for c in text_corpus.PRESETS]
    assert (data.text_dir, data.pattern, data.valid_fraction) in presets


def test_an_unknown_config_name_is_a_user_error(tmp_path):
    with pytest.raises(builders.UnknownConfigError, match="no config 'nope'.*'stdlib'"):
        tfds.builder("text_corpus", config="nope", data_dir=str(tmp_path))


def test_tfds_data_dir_is_honoured(corpus, tmp_path, monkeypatch):
    src = corpus[0]
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "env"))
    config = text_corpus.TextCorpusConfig(text_dir=str(src), valid_fraction=VALID_FRACTION)
    builder = text_corpus.TextCorpus(config=config)
    builder.download_and_prepare()
    assert builder.data_dir == str(tmp_path / "env" / "text_corpus" / config.name / "2.0.0")
    assert paths.data_dir("") == str(tmp_path / "env")


def test_a_named_corpus_whose_files_changed_is_refused(tmp_path):
    src = tmp_path / "src"
    _write_corpus(src)
    config = text_corpus.TextCorpusConfig(name="mine", text_dir=str(src),
                                          valid_fraction=VALID_FRACTION)
    text_corpus.TextCorpus(config=config, data_dir=str(tmp_path / "tfds")).download_and_prepare()
    (src / "top_0.py").write_text("changed = 1\n")
    stale = text_corpus.TextCorpus(config=config, data_dir=str(tmp_path / "tfds"))
    with pytest.raises(builders.StaleDatasetError, match="mine"):
        stale.download_and_prepare()
