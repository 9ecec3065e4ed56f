"""Tests for learned_loss.data.tokenizer."""

import jax.numpy as jnp
import numpy as np
import pytest

from learned_loss.data import tokenizer


def test_vocabulary_layout():
    assert tokenizer.VOCAB_SIZE == 260
    assert (tokenizer.PAD, tokenizer.BOS, tokenizer.EOS, tokenizer.SEP) == (256, 257, 258, 259)
    assert sorted(tokenizer.SPECIALS.values()) == list(range(256, tokenizer.VOCAB_SIZE))


TEXTS = ["", "hello", "héllo wörld", "日本語のテキスト", "emoji 🙂 + tab\t\n", "a\x00b"]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text):
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_str_and_bytes_encode_the_same():
    text = "naïve café"
    np.testing.assert_array_equal(tokenizer.encode(text), tokenizer.encode(text.encode("utf-8")))
    np.testing.assert_array_equal(tokenizer.encode("é"), [0xC3, 0xA9])


def test_bos_eos_placement():
    ids = tokenizer.encode("ab", bos=True, eos=True)
    np.testing.assert_array_equal(ids, [tokenizer.BOS, 97, 98, tokenizer.EOS])
    np.testing.assert_array_equal(tokenizer.encode("ab", bos=True), [tokenizer.BOS, 97, 98])
    np.testing.assert_array_equal(tokenizer.encode("ab", eos=True), [97, 98, tokenizer.EOS])
    empty = tokenizer.encode("", bos=True, eos=True)
    np.testing.assert_array_equal(empty, [tokenizer.BOS, tokenizer.EOS])
    assert tokenizer.encode("", bos=True, eos=True).dtype == np.int32


def test_decode_stops_at_first_eos_and_drops_specials():
    bos, eos, pad, sep = tokenizer.BOS, tokenizer.EOS, tokenizer.PAD, tokenizer.SEP
    ids = [bos, 104, pad, 105, sep, 33, eos, 120, eos, 121]
    assert tokenizer.decode(ids) == "hi!"
    assert tokenizer.decode([tokenizer.EOS, 97]) == ""
    assert tokenizer.decode([tokenizer.PAD] * 3) == ""
    assert tokenizer.decode([]) == ""


def test_decode_accepts_numpy_list_and_jax():
    ids = tokenizer.encode("mixed ✓", bos=True, eos=True)
    assert tokenizer.decode(ids) == "mixed ✓"
    assert tokenizer.decode(ids.tolist()) == "mixed ✓"
    assert tokenizer.decode(jnp.asarray(ids)) == "mixed ✓"
    assert tokenizer.decode(ids.astype(np.uint16)) == "mixed ✓"


def test_decode_replaces_invalid_utf8():
    # A truncated two-byte character (first byte of "é") decodes to U+FFFD.
    assert tokenizer.decode([97, 0xC3]) == "a\ufffd"


def test_invalid_inputs_raise():
    with pytest.raises(TypeError):
        tokenizer.encode(123)
    with pytest.raises(ValueError):
        tokenizer.decode([97, tokenizer.VOCAB_SIZE])
    with pytest.raises(ValueError):
        tokenizer.decode([-1])
    with pytest.raises(ValueError):
        tokenizer.decode(np.zeros((2, 3), np.int32))
