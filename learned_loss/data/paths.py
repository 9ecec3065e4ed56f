"""Where built datasets live: the config's `data.data_dir`, else $LEARNED_LOSS_DATA_DIR, else
~/.cache/learned_loss/tfds. Datasets are keyed by content, so runs share them safely."""

import os

ENV_VAR = "LEARNED_LOSS_DATA_DIR"


def data_dir(configured: str = "") -> str:
    return configured or os.environ.get(ENV_VAR) or os.path.expanduser(
        "~/.cache/learned_loss/tfds")
