"""Byte-level tokenizer: ids 0..255 are raw bytes, the ids above them are specials.

Text is UTF-8 encoded and every byte becomes one token, so there is nothing to
train, nothing to download, and every string round-trips exactly.

Token ids:
  0 .. 255         the byte values themselves.
  256 ..           the special tokens in `SPECIAL_TOKENS` order: PAD, BOS, EOS, SEP.

To add a special token, append its name to `SPECIAL_TOKENS` (never insert or
reorder: existing ids are baked into checkpoints); `SPECIALS` and `VOCAB_SIZE`
follow automatically.

Shapes: T = number of tokens.

  >>> ids = encode("héllo", bos=True, eos=True)  # [T] int32, T = 1 + 6 + 1
  >>> decode(ids)
  'héllo'
"""

from __future__ import annotations

from typing import Any

import numpy as np

NUM_BYTES = 256

# Order fixes the ids; append new specials at the end only.
SPECIAL_TOKENS: tuple[str, ...] = ("PAD", "BOS", "EOS", "SEP")
SPECIALS: dict[str, int] = {
    name: NUM_BYTES + i for i, name in enumerate(SPECIAL_TOKENS)
}

PAD: int = SPECIALS["PAD"]  # 256
BOS: int = SPECIALS["BOS"]  # 257
EOS: int = SPECIALS["EOS"]  # 258
SEP: int = SPECIALS["SEP"]  # 259

VOCAB_SIZE: int = NUM_BYTES + len(SPECIAL_TOKENS)  # 260


def encode(text: str | bytes, *, bos: bool = False, eos: bool = False) -> np.ndarray:
    """Encodes text into byte tokens.

    Args:
        text: a `str` (encoded as UTF-8) or already-encoded `bytes`.
        bos: prepend a BOS token.
        eos: append an EOS token.

    Returns:
        The token ids, an int32 array of shape [T].

    Raises:
        TypeError: if `text` is neither `str` nor `bytes`.
    """
    if isinstance(text, str):
        data = text.encode("utf-8")
    elif isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
    else:
        raise TypeError(f"encode expects str or bytes, got {type(text).__name__}")
    body = np.frombuffer(data, dtype=np.uint8)  # [T_bytes]
    parts = []
    if bos:
        parts.append(np.array([BOS], dtype=np.int32))
    parts.append(body.astype(np.int32))
    if eos:
        parts.append(np.array([EOS], dtype=np.int32))
    return np.concatenate(parts)  # [T]


def decode(ids: Any) -> str:
    """Decodes byte tokens into text.

    Decoding stops at the first EOS: the EOS and everything after it are
    ignored (a sampled continuation ends there). Every other special token
    (PAD, BOS, SEP, ...) is dropped. The remaining bytes are decoded as UTF-8
    with errors='replace', so a truncated multi-byte character becomes U+FFFD
    instead of raising.

    Args:
        ids: token ids of shape [T]: a numpy array, a list, or a jax array.

    Returns:
        The decoded text.

    Raises:
        ValueError: if `ids` is not 1-D or holds an id outside [0, VOCAB_SIZE).
    """
    ids = np.asarray(ids)  # [T]
    if ids.ndim != 1:
        raise ValueError(f"decode expects a 1-D sequence of ids, got shape {ids.shape}")
    if ids.size == 0:
        return ""
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"decode expects integer ids, got dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= VOCAB_SIZE:
        raise ValueError(
            f"token ids must lie in [0, {VOCAB_SIZE}), got range [{ids.min()}, {ids.max()}]"
        )
    eos_positions = np.flatnonzero(ids == EOS)
    if eos_positions.size:
        ids = ids[: eos_positions[0]]
    byte_ids = ids[ids < NUM_BYTES].astype(np.uint8)  # [T_bytes]
    return byte_ids.tobytes().decode("utf-8", errors="replace")
