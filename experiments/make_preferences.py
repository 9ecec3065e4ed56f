"""Builds a `preference_pairs` dataset, from a policy's own samples when a policy is given.

  python -m experiments.make_preferences --workdir=/tmp/prefs --policy=/tmp/sft \
      --pairs_per_family=200 --tau=0.1 --length_bias=0.5

Each example's candidates are its gold answer, one corruption of each kind and, with `--policy`
(a fine-tuning or pre-training workdir; its newest good checkpoint), `--samples_per_prompt`
completions that policy sampled at `--temperature` / `--top_k`. The simulated labeler
(`learned_loss.data.preference_pairs`) labels one pair per example. The dataset goes to the TFDS
data_dir (keyed by a hash of every knob and of the policy samples, so a re-run reuses it), and
`<workdir>/preference_pairs.json` records the dataset, the policy and what each split holds
(pairs per source, the labeler's agreement with the gold order, gold scores and lengths), with
the provenance of the run. Preference data trains reward models and policies, so held-out
families are refused.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import flags, logging

from configs import tasks as task_configs
from learned_loss.core import cli, distributed, files, hosts, policy, provenance
from learned_loss.data import paths, preference_pairs, tasks
from learned_loss.rlhf import preferences

_WORKDIR = flags.DEFINE_string("workdir", None, "Where preference_pairs.json goes.")
_POLICY = flags.DEFINE_string("policy", "", "Workdir of the policy whose samples are "
                              "candidates (empty: gold answers and corruptions only).")
_SPLIT = flags.DEFINE_enum("split", "meta_train", ("meta_train", "meta_valid"),
                           "Which training families (when --families is empty).")
_FAMILIES = flags.DEFINE_list("families", [], "Explicit family names (none held out).")
_PAIRS = flags.DEFINE_integer("pairs_per_family", 200, "Labelled pairs per family, all splits.")
_DIFFICULTY = flags.DEFINE_list("difficulty", ["1"], "A difficulty, or LO,HI drawn uniformly.")
_TAU = flags.DEFINE_float("tau", 0.1, "The labeler's noise temperature (> 0).")
_LENGTH_BIAS = flags.DEFINE_float("length_bias", 0.0, "The labeler's length bias lambda.")
_LENGTH_SCALE = flags.DEFINE_float("length_scale", 0.0, "L in bytes (0: the seq_len).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 0, "Sequence length every candidate must fit "
                                "(0: the policy's, else 128).")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the prompts, corruptions, labels and samples.")
_SAMPLES = flags.DEFINE_integer("samples_per_prompt", 2, "Policy samples per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0: greedy).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest tokens (0: all).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 48, "Longest policy sample.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Prompts generated together.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir (empty: "
                                "$TFDS_DATA_DIR or ~/.cache/learned_loss/tfds).")
_KNOBS = ("policy", "split", "families", "pairs_per_family", "difficulty", "tau", "length_bias",
          "length_scale", "seq_len", "seed", "samples_per_prompt", "temperature", "top_k",
          "max_new_tokens", "batch_size", "data_dir")


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]}")
    if not _WORKDIR.value:
        raise cli.UserError("--workdir is required: the folder for preference_pairs.json")
    distributed.initialize()
    trained = policy.load(_POLICY.value) if _POLICY.value else None
    split_cfg = ml_collections.ConfigDict(
        ((trained.config.get("tasks") if trained else None) or task_configs.task_config())
        .to_dict())
    split_cfg.train_split = _SPLIT.value
    families = tasks.roles.resolve(split_cfg, "pairs", tuple(_FAMILIES.value))
    seq_len = _SEQ_LEN.value or (trained.config.data.seq_len if trained else 128)
    length_scale = _LENGTH_SCALE.value or float(seq_len)
    difficulty = tasks.partition.parse_difficulty(_DIFFICULTY.value)

    samples = None
    if trained:
        prompts = preference_pairs.pair_examples(
            families=families, pairs_per_family=_PAIRS.value, difficulty=difficulty,
            seed=_SEED.value)
        examples = [e for split in sorted(prompts) for e in prompts[split]]
        samples = preferences.sample_completions(
            trained.model, trained.params, examples, samples_per_prompt=_SAMPLES.value,
            temperature=_TEMPERATURE.value, top_k=_TOP_K.value, max_new_tokens=_MAX_NEW.value,
            batch_size=_BATCH.value, seq_len=seq_len, rng=jax.random.key(_SEED.value))
        logging.info("sampled %d completions from step %d of %s",
                     sum(map(len, samples.values())), trained.step, trained.workdir)

    info = hosts.first_on_process_zero(lambda: preference_pairs.build_preference_pairs(
        paths.data_dir(_DATA_DIR.value), families=families, pairs_per_family=_PAIRS.value,
        difficulty=difficulty, tau=_TAU.value, length_bias=_LENGTH_BIAS.value,
        length_scale=length_scale, seed=_SEED.value, seq_len=seq_len, policy_samples=samples),
        "pairs built")
    summary = {
        split: preferences.summarize([preference_pairs.decode_record(r) for r in
                                      preference_pairs.load_split(info, split)])
        for split in info.num_pairs}
    knobs = {name: flags.FLAGS[name].value for name in _KNOBS}
    result = {
        "dataset": info.provenance(),
        "policy": ({"workdir": trained.workdir, "step": trained.step} if trained else None),
        "sampling": ({"samples_per_prompt": _SAMPLES.value, "temperature": _TEMPERATURE.value,
                      "top_k": _TOP_K.value, "max_new_tokens": _MAX_NEW.value}
                     if trained else None),
        "splits": summary,
        "provenance": provenance.collect(knobs, extra={
            tasks.roles.RECORD_KEY: tasks.roles.record({"pairs": families})}),
    }
    path = files.write_json(os.path.join(_WORKDIR.value, "preference_pairs.json"), result)
    logging.info("%s pairs in %s (labeler agrees with the gold order on %.3f of train) -> %s",
                 info.num_pairs, info.builder_dir, summary["train"]["gold_order_agreement"]
                 if "train" in summary else float("nan"), path)


if __name__ == "__main__":
    cli.run(main)
