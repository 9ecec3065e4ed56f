"""Where built datasets live: the config's `data.data_dir` if set, else $TFDS_DATA_DIR (TFDS's own
variable), else ~/.cache/learned_loss/tfds. Datasets are keyed by content, so runs share them
safely. The folder must be local (a one-line cli.UserError for gs://): ArrayRecord files are
written and read with POSIX file calls, which do not reach a bucket.

$LEARNED_LOSS_DATA_DIR, the variable's old name, is still read after $TFDS_DATA_DIR, with a
warning, so that scripts that export it keep their datasets until they move to the new name.
"""

import os

from absl import logging

from learned_loss.core import files

ENV_VAR = "TFDS_DATA_DIR"
DEPRECATED_ENV_VAR = "LEARNED_LOSS_DATA_DIR"
DEFAULT = "~/.cache/learned_loss/tfds"


def data_dir(configured: str = "") -> str:
    """`configured` if non-empty, else $TFDS_DATA_DIR, else $LEARNED_LOSS_DATA_DIR (deprecated),
    else the package's default (user-expanded); refused when it is in a bucket."""
    return files.local_only(_chosen(configured), "the dataset folder (config data.data_dir or "
                            f"${ENV_VAR}; ArrayRecord files are written with POSIX file calls)")


def _chosen(configured: str) -> str:
    if configured:
        return configured
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    if os.environ.get(DEPRECATED_ENV_VAR):
        logging.log_first_n(logging.WARNING, "$%s is deprecated; export $%s instead", 1,
                            DEPRECATED_ENV_VAR, ENV_VAR)
        return os.environ[DEPRECATED_ENV_VAR]
    return os.path.expanduser(DEFAULT)
