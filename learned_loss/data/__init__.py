"""Data layer: byte tokenizer, the `text_corpus` and `instruction_tasks` TFDS builders (importing
the package registers them, so `tfds.builder("instruction_tasks", config="easy")` works), and
grain LM pipelines."""

from learned_loss.data.instruction_tasks import build_instruction_tasks, InstructionTasks
from learned_loss.data.instruction_tasks import InstructionTasksConfig
from learned_loss.data.pipeline import LMIterator, make_eval_batches, make_lm_iterator, token_stream
from learned_loss.data.text_corpus import build_text_corpus, corpus_hash, CorpusError, CorpusInfo
from learned_loss.data.text_corpus import default_text_dir, load_split, TextCorpus
from learned_loss.data.text_corpus import TextCorpusConfig
from learned_loss.data.tokenizer import BOS, decode, encode, EOS, PAD, SEP, SPECIALS, VOCAB_SIZE
