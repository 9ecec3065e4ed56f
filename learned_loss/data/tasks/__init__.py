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

from learned_loss.data.tasks import partition, roles
from learned_loss.data.tasks.base import CATEGORIES, check_fits, DIFFICULTIES, encode_example
from learned_loss.data.tasks.base import Example, Family, input_id, MAX_SEQ_LEN, prompt_tokens
from learned_loss.data.tasks.base import sequence_length, task_text, TaskError
from learned_loss.data.tasks.partition import difficulty_range, input_space, split_of
from learned_loss.data.tasks.registry import FAMILIES, family_names, get_family, sample_example
from learned_loss.data.tasks.scoring import exact_match, graded_score, score
from learned_loss.data.tasks.splits import families_for, split_families, SPLIT_NAMES
from learned_loss.data.tasks.splits import training_families
