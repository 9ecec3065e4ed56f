"""The easy-families SFT run (configs/finetune.py:easy) reaches 90% exact match from scratch.

Its own file, so that this, the longest test, runs beside the others in the two test workers."""

from configs import finetune as finetune_config
from tests import runs


def test_sft_on_easy_families_reaches_90_percent(tmp_path):
    steps = finetune_config.VARIANTS["easy"]["steps"]
    workdir = tmp_path / "run"
    # Evaluated and saved once, at the end: the budget itself is the config's.
    result = runs.run("experiments.finetune", workdir, "configs/finetune.py:easy",
                      f"--config.data.data_dir={tmp_path / 'tfds'}",
                      f"--config.train.eval_every={steps}",
                      f"--config.train.checkpoint_every={steps}", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    final = runs.metrics(workdir)[-1]
    assert final["step"] == steps
    assert final["valid/exact_match"] >= 0.9, final
