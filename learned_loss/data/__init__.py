"""Data layer: byte tokenizer, the `text_corpus` TFDS builder, and grain LM pipelines."""

from learned_loss.data.pipeline import LMIterator, make_eval_batches, make_lm_iterator, token_stream
from learned_loss.data.text_corpus import build_text_corpus, corpus_hash, CorpusError, CorpusInfo
from learned_loss.data.text_corpus import default_text_dir, load_split, TextCorpus
from learned_loss.data.tokenizer import BOS, decode, encode, EOS, PAD, SEP, SPECIALS, VOCAB_SIZE
