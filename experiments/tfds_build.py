"""`tfds build` for the package's datasets, without TensorFlow.

  python -m experiments.tfds_build instruction_tasks --config=easy --data_dir=/tmp/tfds
  python -m experiments.tfds_build text_corpus --config=stdlib_email --data_dir=/tmp/tfds
  python -m experiments.tfds_build instruction_tasks --data_dir=/tmp/tfds \
      --config='{"families": ["add", "reverse_string"], "examples_per_family": 200,
                 "difficulty": [1, 3], "label_noise": 0.2, "seq_len": 128}'

The flags are TFDS's own `tfds build` flags (`--help` lists them: --config, --config_idx,
--data_dir, --overwrite, --max_examples_per_split, ...): this runs TFDS's `build` command
(`tensorflow_datasets.scripts.cli.build`) after importing `learned_loss.data`, which registers
`instruction_tasks` and `text_corpus`. A JSON `--config` gives the knobs of an
`InstructionTasksConfig` or `TextCorpusConfig`; left unnamed, it is named by its content, as
`build_instruction_tasks` and `build_text_corpus` name theirs. Without `--config` every named
config is built. `--data_dir` defaults to TFDS's ($TFDS_DATA_DIR, else ~/tensorflow_datasets).

Why not the `tfds` command itself: tensorflow-datasets 4.9.10's `tfds` imports its
`convert_format` command, which needs TensorFlow at import time (`tf.train.Example` in a
module-level alias), so `tfds build` stops at "No module named 'tensorflow'" where TensorFlow is
not installed, as here. With TensorFlow installed, the same build should be
`tfds build --imports=learned_loss.data instruction_tasks --config=easy --data_dir=/tmp/tfds`
(not tried: the package does not install TensorFlow).
"""

from __future__ import annotations

from absl import app
from tensorflow_datasets.scripts.cli import build, cli_utils

import learned_loss.data  # noqa: F401  (registers the builders)
from learned_loss.core import cli

_parse_flags = cli_utils.make_flags_parser(build.Args, description=__doc__.splitlines()[0])


def main(args: build.Args) -> None:
    try:
        args.execute()
    except cli.UserError as e:
        cli.fail(str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
