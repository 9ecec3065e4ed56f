"""One engine: the comparison's MLE is the MLE users run.

A token-level MLE cell of configs/compare.py (token_arms.train_cells, vmapped over seeds, the
steps a lax.scan) and experiments/finetune.py at the cell's settings
(`token_arms.finetune_config`: its data, seed, optimizer, steps and batches) end in the same
training state, bitwise: parameters, optimizer moments, step and rng; the policy the comparison
keeps of the cell (`compare.write_sft`) is that state.

Both run in one child process with one CPU device: on the suite's 8 simulated devices the
fine-tuning run would split its batch over them and sum its gradient in another order. The
child compiles with XLA's default fusion emitters, as users' programs are: bitwise equality of
two programs is a property of the code generation (with the older fusion emitters that the rest
of the suite compiles with, the vmapped and the single run differ in the last bits). It keeps
the suite's LLVM level 0, which compiles faster (20 s of CPU against 32 s) and, measured, gives
the same equality as XLA's default level 3.
"""

import json
import os
import sys

import jax
import ml_collections
import numpy as np
import pytest

from learned_loss.core import cli
from learned_loss.data import training_rows
from learned_loss.meta import base
from tests import runs


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def main(workdir: str) -> None:
    """Trains the cell and the fine-tuning run in `workdir`; writes result.json there."""
    from configs import compare as compare_config
    from configs import finetune as finetune_config
    from experiments import finetune
    from learned_loss.core import checkpoint, train
    from learned_loss.core import model as model_lib
    from learned_loss.studies import compare, token_arms

    config = compare_config.get_config("smoke")
    config.data.data_dir = os.path.join(workdir, "tfds")
    config.tasks.examples_per_family = 200  # a validation split of 40: one batch of 32
    view = compare.noisy_view(config)
    cell = token_arms.Cell(compare.FAMILY_SET, "swap30", "mle", config.model.variant, seed=1)
    data = token_arms.build_data(view, cell.family_set, cell.noise, cell.seed)
    _, inners, facts = token_arms.train_cells(view, [cell], [data])  # fresh initialisation
    kept = os.path.join(workdir, "kept")
    compare.write_sft(view, kept, inners[0], cell.seed, config.families)

    base = finetune_config.get_config("smoke")
    base.train.eval_prompts_per_family = 2
    ft = token_arms.finetune_config(view, cell, base)
    tuned = os.path.join(workdir, "finetune")
    finetune.run(ft, tuned)

    model = model_lib.build(model_lib.ModelConfig.from_config(ft.model))
    optimizer = train.make_optimizer(ft.optimizer, ft.train.num_steps)
    abstract = jax.eval_shape(lambda: train.init_state(model, optimizer, jax.random.key(0),
                                                       ft.data.seq_len))
    states = {name: checkpoint.Checkpointer(path, read_only=True).restore_latest(
        abstract, model_config=ft.model.to_dict()).state for name, path in
        (("finetune", tuned), ("kept", kept))}
    fresh = train.init_state(model, optimizer, jax.random.key(cell.seed), ft.data.seq_len)
    same = {part: all(np.array_equal(a, b) for a, b in zip(
        _leaves(getattr(states["finetune"], part)), _leaves(getattr(states["kept"], part))))
        for part in train.TrainState._fields}
    cell_params = all(np.array_equal(a, b) for a, b in zip(
        _leaves(states["finetune"].params), _leaves(inners[0]["params"])))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
        _leaves(states["finetune"].params), _leaves(fresh.params)))
    with open(os.path.join(workdir, "result.json"), "w", encoding="utf-8") as f:
        json.dump({"same": same, "cell_params": cell_params, "moved": moved,
                   "steps": facts["steps"], "finetune_step": int(states["finetune"].step),
                   "sampler": ft.data.sampler}, f)


def test_mle_cell_and_finetune_take_the_same_steps_bitwise(tmp_path):
    proc = runs.run_module("tests.test_one_engine", str(tmp_path), timeout=400,
                           default_emitters=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "result.json", encoding="utf-8") as f:
        result = json.load(f)
    assert result["sampler"] == "uniform"
    assert result["finetune_step"] == result["steps"] == 8
    assert result["moved"] > 1e-3  # the runs trained: the equality is not of two fresh models
    assert result["cell_params"], "finetune's parameters differ from the cell's"
    assert result["same"] == {"params": True, "opt_state": True, "step": True, "rng": True}


def _rows(n: int, seed: int) -> training_rows.Demonstrations:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 50, (n, 6)).astype(np.int32)
    return training_rows.Demonstrations(tokens, tokens, np.ones((n, 6), np.float32),
                                        np.zeros((n,), bool))


def test_uniform_batches_are_the_unroll_batches_and_resume_at_their_step():
    rows, key = _rows(20, 0), jax.random.key(3)
    keys = base.step_keys(key, 5)
    batches = list(training_rows.UniformBatches(rows, keys, 4))
    assert len(batches) == 5
    for i in (0, 4):
        drawn = training_rows.draw({k: np.asarray(v) for k, v in rows.batch().items()},
                                   keys[i], 4)
        np.testing.assert_array_equal(batches[i]["inputs"], drawn["inputs"])
    assert not np.array_equal(batches[0]["inputs"], batches[1]["inputs"])
    first = training_rows.UniformBatches(rows, keys, 4)
    next(first), next(first)
    resumed = training_rows.UniformBatches(rows, keys, 4)
    resumed.set_state(first.get_state())
    np.testing.assert_array_equal(next(resumed)["inputs"], batches[2]["inputs"])
    # The second of two processes reads the second half of each global batch.
    second = next(training_rows.UniformBatches(rows, keys, 4, process_index=1, process_count=2))
    np.testing.assert_array_equal(second["inputs"], batches[0]["inputs"][2:])
    with pytest.raises(ValueError, match="rows"):
        training_rows.UniformBatches(_rows(20, 1), keys, 4).set_state(first.get_state())
    with pytest.raises(ValueError, match="sampler"):
        training_rows.UniformBatches(rows, keys, 4).set_state({"next_index": 3})


def test_an_unknown_sampler_is_refused_with_the_choices():
    from experiments import finetune

    config = ml_collections.ConfigDict({"seed": 0, "data": {
        "sampler": "shuffle", "seq_len": 6, "global_batch_size": 4}})
    with pytest.raises(cli.UserError, match="'epochs' or 'uniform'"):
        finetune.train_batches(config, [])


if __name__ == "__main__":
    main(sys.argv[1])
