"""Where built datasets live: the config's `data.data_dir` if set, else $TFDS_DATA_DIR (TFDS's own
variable), else ~/.cache/learned_loss/tfds. Datasets are keyed by content, so runs share them
safely.

$LEARNED_LOSS_DATA_DIR, the variable's old name, is still read after $TFDS_DATA_DIR, with a
warning, so that scripts that export it keep their datasets until they move to the new name.
"""

import os

from absl import logging

ENV_VAR = "TFDS_DATA_DIR"
DEPRECATED_ENV_VAR = "LEARNED_LOSS_DATA_DIR"
DEFAULT = "~/.cache/learned_loss/tfds"


def data_dir(configured: str = "") -> str:
    """`configured` if non-empty, else $TFDS_DATA_DIR, else $LEARNED_LOSS_DATA_DIR (deprecated),
    else the package's default (user-expanded)."""
    if configured:
        return configured
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    if os.environ.get(DEPRECATED_ENV_VAR):
        logging.log_first_n(logging.WARNING, "$%s is deprecated; export $%s instead", 1,
                            DEPRECATED_ENV_VAR, ENV_VAR)
        return os.environ[DEPRECATED_ENV_VAR]
    return os.path.expanduser(DEFAULT)
