"""The instruction task suite: procedurally generated task families and their gold scorers.

  FAMILIES                  name -> Family (ordered: string, list, arithmetic, formatting)
  sample_example(...)       one Example (prompt, answer) from a family, seeded
  encode_example(...)       [BOS] prompt [SEP] answer [EOS] PAD.. as inputs/targets/mask
  prompt_tokens(...)        [BOS] prompt [SEP]: what a policy generates from
  exact_match / graded_score / score    the gold scorers
  split_families / families_for         meta-train / meta-valid / held-out families
  roles                     the roles families play in a run (task or meta), resolved and
                            recorded; a comparison refuses evaluation families in meta roles
  partition                 which split (train / validation / test) each input lives in:
                            draw / draw_split sample one split, input_space counts inputs

  rng = np.random.default_rng(0)
  ex = sample_example("add", rng, difficulty=3)     # e.g. prompt 'Add 457 and 698.', answer '1155'
  batch = encode_example(ex, seq_len=256)           # inputs/targets/mask [256], prompt_length

See base.py for the conventions every family follows (difficulty 1..5,
single-line ASCII, fits 256 tokens).
"""

from learned_loss.data.tasks.base import CATEGORIES
from learned_loss.data.tasks.base import DIFFICULTIES
from learned_loss.data.tasks.base import MAX_SEQ_LEN
from learned_loss.data.tasks.base import Example
from learned_loss.data.tasks.base import Family
from learned_loss.data.tasks.base import TaskError
from learned_loss.data.tasks.base import check_fits
from learned_loss.data.tasks.base import encode_example
from learned_loss.data.tasks.base import input_id
from learned_loss.data.tasks.base import prompt_tokens
from learned_loss.data.tasks.base import sequence_length
from learned_loss.data.tasks.base import task_text
from learned_loss.data.tasks import partition
from learned_loss.data.tasks import roles
from learned_loss.data.tasks.partition import difficulty_range
from learned_loss.data.tasks.partition import input_space
from learned_loss.data.tasks.partition import split_of
from learned_loss.data.tasks.registry import FAMILIES
from learned_loss.data.tasks.registry import family_names
from learned_loss.data.tasks.registry import get_family
from learned_loss.data.tasks.registry import sample_example
from learned_loss.data.tasks.scoring import exact_match
from learned_loss.data.tasks.scoring import graded_score
from learned_loss.data.tasks.scoring import score
from learned_loss.data.tasks.splits import SPLIT_NAMES
from learned_loss.data.tasks.splits import families_for
from learned_loss.data.tasks.splits import split_families
from learned_loss.data.tasks.splits import training_families
