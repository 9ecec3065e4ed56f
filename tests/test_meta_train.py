"""Meta-training end to end on the smoke config: offline and online runs, bitwise resume,
divergence handling on the language-model inner problem, and the artifact driving fine-tuning."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import meta_train as meta_configs
from configs import objectives as objective_configs
from experiments import finetune
from learned_loss import objectives
from learned_loss.core import cli, policy, sharding, train
from learned_loss.core import metrics as metrics_lib
from learned_loss.data import instruction_tasks, tasks
from learned_loss.meta import base, es, lm_problem, outer, tbptt
from learned_loss.meta import run as meta_run
from learned_loss.objectives import artifact, mle
from tests import runs


def _config(data_dir, **outer_overrides):
    config = meta_configs.get_config("smoke")
    config.data.data_dir = str(data_dir)
    config.outer.update(outer_overrides)
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def offline(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("meta")
    last = meta_run.run(_config(data_dir), str(workdir))
    return workdir, last


def test_offline_run_logs_and_writes_an_artifact(offline, data_dir):
    workdir, last = offline
    records = metrics_lib.read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("meta_loss", "grad_norm", "diverged", "skipped", "rejected", "sanity/before",
                "sanity/after"):
        assert all(np.isfinite(r[key]) for r in records), key
    evals = [r for r in records if "meta_valid/nll" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(r["diverged"] == 0.0 for r in records)
    art = artifact.load(os.path.join(workdir, "artifact"), expected_name="learned_token_loss")
    assert art.settings["features"] == list(objectives.DEFAULTS["features"])
    assert art.config["estimator"]["name"] == "tbptt"
    assert art.provenance["provenance"]["git_commit"]
    # The artifact is the theta the run validated last: a fresh meta-validation run under it
    # repeats the logged NLL bit for bit, and one under theta's initialisation (MLE: every
    # weight 1) the logged MLE baseline.
    config = _config(data_dir)
    setup = meta_run.Setup(config)
    validate, key = setup.validator(), jax.random.key(config.seed + 1)
    assert validate(art.theta, key)["nll"] == last["meta_valid/nll"]
    assert validate(setup.theta0, key)["nll"] == last["meta_valid/mle_nll"]
    # The two validations differ, so the first check tells the artifact from the initialisation
    # (4 outer steps of adam at 3e-3 are too few to expect the learned NLL below MLE's).
    assert last["meta_valid/nll"] != last["meta_valid/mle_nll"]


def test_offline_run_resumes_bit_for_bit(offline, tmp_path, data_dir):
    workdir, _ = offline
    copy = tmp_path / "resumed"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "4")
    shutil.rmtree(copy / "artifact")
    meta_run.run(_config(data_dir), str(copy))
    theirs = artifact.load(os.path.join(workdir, "artifact")).theta
    ours = artifact.load(os.path.join(copy, "artifact")).theta
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name])
    assert ([r["meta_loss"] for r in metrics_lib.read_metrics(copy)]
            == [r["meta_loss"] for r in metrics_lib.read_metrics(workdir)])
    # A finished run started again keeps its artifact untouched.
    stamp = os.path.getmtime(copy / "artifact" / artifact.RECORD)
    assert meta_run.run(_config(data_dir), str(copy)) == {}
    assert os.path.getmtime(copy / "artifact" / artifact.RECORD) == stamp


def test_online_run_trains_and_scores_a_model(tmp_path, data_dir):
    config = _config(data_dir)
    config.mode = "online"
    result = meta_run.run(config, str(tmp_path))
    # The overall exact match is the mean over families of each family's share of exact answers,
    # recomputed from the per-prompt record.
    per_prompt = result["per_prompt"]
    assert result["num_examples"] == len(per_prompt["exact_match"]) > 0
    by_family = {}
    for family, hit in zip(per_prompt["family"], per_prompt["exact_match"]):
        by_family.setdefault(family, []).append(hit)
    assert sorted(by_family) == sorted(result["families"])
    np.testing.assert_allclose(result["overall"]["exact_match"],
                               np.mean([np.mean(v) for v in by_family.values()]), rtol=1e-12)
    with open(tmp_path / "online_eval.json") as f:
        assert json.load(f)["overall"] == result["overall"]
    records = metrics_lib.read_metrics(tmp_path)
    assert records[-1]["step"] == config.online.num_steps
    assert all(np.isfinite(r["meta_loss"]) for r in records)
    assert artifact.load(str(tmp_path / "artifact")).name == "learned_token_loss"


def _tiny_problem(objective, optimizer, data_dir):
    config = _config(data_dir)
    setup = meta_run.Setup(config)
    return lm_problem.lm_problem(setup.model, optimizer, objective, setup.train_rows,
                                 setup.valid_rows, batch_size=4, valid_batch_size=8,
                                 seq_len=config.data.seq_len)


def test_tbptt_through_adam_matches_finite_differences(data_dir):
    objective = objectives.build({"name": "learned_token_loss", "features": ["log_prob",
                                                                            "position"],
                                  "hidden": 4})
    optimizer = train.make_optimizer(train.constant_adam(1e-2), differentiable=True)
    problem = _tiny_problem(objective, optimizer, data_dir)
    key = jax.random.key(0)
    theta = dict(objective.theta, w1=jnp.array([0.5, -0.3, 0.2, 0.1]), b1=jnp.array(0.1))
    # Strongly typed, as the shifted thetas below are: one program serves all three calls.
    theta = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), theta)
    inner = problem.init(key)
    loss = lambda t: base.unroll(problem, t, inner, key, 3)[1]
    # One program gives the gradient and, at the two shifted thetas, the losses.
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    grad = value_and_grad(theta)[1]
    direction = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), theta)
    eps = 1e-2
    plus = jax.tree.map(lambda t, d: t + eps * d, theta, direction)
    minus = jax.tree.map(lambda t, d: t - eps * d, theta, direction)
    numeric = (float(value_and_grad(plus)[0]) - float(value_and_grad(minus)[0])) / (2 * eps)
    analytic = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree.leaves(grad),
                                                          jax.tree.leaves(direction)))
    assert abs(analytic) > 1e-4
    np.testing.assert_allclose(analytic, numeric, rtol=0.05, atol=1e-4)


def _explosive():
    """An objective whose theta scales the loss: under plain SGD a large scale blows the model
    up (the learned token loss cannot: its weights are bounded by construction)."""

    def loss(theta, logits, batch):
        value, m = mle.loss((), logits, batch)
        return value * jnp.exp(theta["log_scale"]), m

    return objectives.Objective("explosive", loss, {"log_scale": jnp.array(0.0)})


def test_inner_runs_that_blow_up_are_failures_not_crashes(data_dir):
    problem = _tiny_problem(_explosive(), optax.sgd(1.0), data_dir)
    schedule = base.TruncationSchedule(3, 6, 6)
    blown = {"log_scale": jnp.array(12.0)}
    fine = {"log_scale": jnp.array(-3.0)}
    # One outer step from a theta whose inner runs all blow up: every run is counted as
    # diverged and restarts, and the outer loop takes no non-finite step.
    estimator = tbptt.tbptt(problem, schedule, num_particles=2, remat=False)
    opt = optax.adam(0.1)
    state = outer.init(estimator, opt, blown, jax.random.key(2))
    state, m = jax.jit(outer.outer_step(estimator, opt))(state)
    assert float(m["diverged"]) == 1.0
    assert np.isfinite(float(m["grad_norm"])) and np.isfinite(float(state.theta["log_scale"]))
    assert np.all(np.asarray(state.estimator.step) == np.asarray(state.estimator.horizon))
    # The sanity check rejects a candidate whose fresh run blows up and accepts one that learns.
    check = jax.jit(outer.sanity_check(problem, 3))
    assert not bool(check(blown, jax.random.key(3))[0])
    assert bool(check(fine, jax.random.key(3))[0])


def test_learned_objective_artifact_drives_finetuning(offline, tmp_path):
    workdir, _ = offline
    done = runs.run("experiments.finetune", tmp_path / "sft", "configs/finetune.py:smoke",
                    "--config.objective=learned_token_loss",
                    f"--config.objective.path={workdir}/artifact")
    assert done.returncode == 0, done.stderr[-3000:]
    records = runs.metrics(tmp_path / "sft")
    assert all(np.isfinite(r["nll"]) for r in records)
    # The run's last evaluation is the artifact's loss: recomputed here from the final
    # checkpoint, the artifact's theta and the initial params as the reference, the weights'
    # mean and spread and the weighted loss are the logged ones.
    again = _last_evaluation_again(str(tmp_path / "sft"))
    for name in ("valid/mean_weight", "valid/weight_std", "valid/loss", "valid/nll"):
        np.testing.assert_allclose(records[-1][name], again[name], rtol=1e-5, err_msg=name)
    missing = runs.run("experiments.finetune", tmp_path / "bad", "configs/finetune.py:smoke",
                       "--config.objective=learned_token_loss",
                       f"--config.objective.path={tmp_path}/nowhere")
    assert missing.returncode == 2
    assert "no learned-objective artifact" in missing.stderr


def _last_evaluation_again(workdir: str) -> dict[str, float]:
    """valid/* of a fine-tuning run's last evaluation (experiments/finetune.py), recomputed from
    its newest checkpoint: the objective its config names, with the run's initial params as the
    reference, averaged over the same validation batches."""
    config = policy.run_config(workdir)
    sft = policy.load(workdir)
    assert sft.step == config.train.num_steps
    families = tasks.roles.resolve(config.tasks, "finetune")
    valid = instruction_tasks.load_split(finetune.prepare_tasks(config, families), "validation")
    encoded = finetune.encoded_demonstrations(valid, config.data.seq_len)
    size = config.data.global_batch_size
    starts = range(0, min(len(valid), config.train.eval_batches * size) - size + 1, size)
    batches = [{k: np.stack([encoded[i][k] for i in range(s, s + size)])
                for k in ("inputs", "targets", "mask")} for s in starts]
    optimizer = train.make_optimizer(config.optimizer, config.train.num_steps)
    objective = objectives.build(config.objective)
    loss_fn = train.objective_loss(sft.model, objective)

    @jax.jit  # One program (the reference's init and both forward passes): one compilation.
    def metrics(params, batch, key):
        reference = train.init_state(sft.model, optimizer, key, config.data.seq_len).params
        return loss_fn(params, batch, train.step_theta(objective, reference))[1]

    key = jax.random.key(config.seed)
    values = [jax.device_get(metrics(sft.params, b, key)) for b in batches]
    return {f"valid/{k}": float(np.mean([v[k] for v in values])) for k in values[0]}


def test_meta_train_user_errors(tmp_path, data_dir):
    # In process (a UserError is one line and exit 2 at every entry point: tests/test_errors.py;
    # `--config.objective=NAME` parses to objective_config(NAME): test_learned_objectives.py).
    wrong = _config(data_dir)
    wrong.objective = objective_configs.objective_config("mle")
    with pytest.raises(cli.UserError, match="learned_token_loss"):
        meta_run.run(wrong, str(tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a" / "artifact")
    heldout = _config(data_dir)  # The same for a held-out family.
    heldout.tasks.families = ("lowercase",)
    with pytest.raises(cli.UserError, match="held-out"):
        meta_run.run(heldout, str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "b" / "artifact")



def test_es_population_over_pop_and_batch_over_data_matches_one_device(data_dir):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    mesh = sharding.make_mesh({"pop": 2, "data": 4})
    setup = meta_run.Setup(_config(data_dir))
    objective = objectives.build({"name": "learned_token_loss", "features": ["log_prob"],
                                  "hidden": 4})
    theta = dict(objective.theta, w1=jnp.array([0.5, -0.3, 0.2, 0.1]))
    grads, losses = [], []
    optimizer = train.make_optimizer(train.constant_adam(1e-2), differentiable=True)
    for m in (None, mesh):
        problem = lm_problem.lm_problem(setup.model, optimizer, objective,
                                        setup.train_rows, setup.valid_rows, batch_size=8,
                                        valid_batch_size=8, seq_len=64, mesh=m)
        estimator = es.antithetic_es(problem, base.TruncationSchedule(2, 4, 4), num_pairs=2,
                                     sigma=0.1, shaping="none", mesh=m)
        state = estimator.init(theta, jax.random.key(0))
        grad, _, metrics = jax.jit(estimator.estimate)(theta, state, jax.random.key(1))
        grads.append(grad)
        losses.append(float(metrics["perturbed_loss"]))
    # The members' losses agree to float32 rounding; the ES gradient divides their differences
    # by sigma, so it agrees to the rounding of the sharded reductions.
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=0.02, atol=1e-5)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[0]))


@pytest.mark.parametrize("variant", ["swap50", "swap50_rows"])
def test_the_swap50_variant_meta_trains_in_the_grids_swap50_setting(variant):
    from configs import noisy_demonstrations as noisy_configs
    from learned_loss.objectives import learned

    meta = meta_configs.get_config(variant)
    grid = noisy_configs.get_config("tiny")
    noise = noisy_configs.NOISES["swap50"]
    assert meta.model.to_dict() == grid.model.to_dict()
    assert (meta.inner.batch_size, meta.inner.lr) == (grid.batch_size, grid.optimizer.lr)
    assert meta.tasks.examples_per_family == grid.tasks.examples_per_family
    assert (meta.tasks.label_noise, tuple(meta.tasks.noise_kinds)) == (noise["rho"],
                                                                        noise["kinds"])
    train_fraction = 1.0 - meta.data.valid_fraction - meta.data.test_fraction
    assert train_fraction == pytest.approx(grid.data.splits["train"])
    # Whole runs: the longest horizon and meta-validation are the cells' budget, by PES.
    assert meta.estimator.name == "pes"
    assert meta.estimator.max_horizon == meta.meta_valid.horizon == grid.steps
    assert set(learned.HISTORY_FEATURES) <= set(meta.objective.features)
    # Built from these settings, the inner runs read each row's history.
    assert objectives.build(meta.objective).needs_history
    if variant == "swap50_rows":  # One weight per row; progress counts the cells' steps.
        assert (meta.objective.granularity, meta.objective.run_steps) == ("row", grid.steps)
