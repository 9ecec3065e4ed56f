"""Data layer: byte tokenizer, the `text_corpus` TFDS builder, and grain LM pipelines."""

from learned_loss.data.pipeline import LMIterator
from learned_loss.data.pipeline import make_eval_batches
from learned_loss.data.pipeline import make_lm_iterator
from learned_loss.data.pipeline import token_stream
from learned_loss.data.text_corpus import CorpusError
from learned_loss.data.text_corpus import CorpusInfo
from learned_loss.data.text_corpus import TextCorpus
from learned_loss.data.text_corpus import build_text_corpus
from learned_loss.data.text_corpus import corpus_hash
from learned_loss.data.text_corpus import default_text_dir
from learned_loss.data.text_corpus import load_split
from learned_loss.data.tokenizer import BOS
from learned_loss.data.tokenizer import EOS
from learned_loss.data.tokenizer import PAD
from learned_loss.data.tokenizer import SEP
from learned_loss.data.tokenizer import SPECIALS
from learned_loss.data.tokenizer import VOCAB_SIZE
from learned_loss.data.tokenizer import decode
from learned_loss.data.tokenizer import encode
