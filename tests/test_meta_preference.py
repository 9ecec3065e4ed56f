"""Meta-training the learned preference loss end to end on the smoke config: the artifact loads
by name into DPO, resume is bitwise, bad configs are one-line errors, interpretation fits."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from configs import meta_preference
from configs import meta_train as meta_train_configs
from configs import rlhf as rlhf_configs
from learned_loss.core import cli
from learned_loss.core import metrics as metrics_lib
from learned_loss.meta import base, interpret, preference_problem, preference_run
from learned_loss.meta import run as meta_run
from learned_loss.objectives import artifact, learned
from learned_loss.rlhf import training
from learned_loss.rlhf import pipeline as rlhf_pipeline
from tests import runs


def _config(data_dir):
    config = meta_preference.get_config("smoke")
    config.data.data_dir = str(data_dir)
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def offline(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("meta_pref")
    last = preference_run.run(_config(data_dir), str(workdir))
    return workdir, last


@pytest.fixture(scope="module")
def setup(offline, data_dir):
    """The smoke run's data, reference and problems, built again (as a resumed run does)."""
    return preference_run.PreferenceSetup(_config(data_dir))


def test_run_logs_meta_validation_and_writes_the_artifact(offline, setup):
    workdir, last = offline
    records = metrics_lib.read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["meta_loss"]) and r["diverged"] == 0.0 for r in records)
    evals = [r for r in records if "meta_valid/loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert 0.0 <= r["meta_valid/accuracy"] <= 1.0 and 0.0 <= r["meta_valid/dpo_accuracy"] <= 1
        assert np.isfinite(r["meta_valid/loss"]) and np.isfinite(r["meta_valid/dpo_loss"])
    # The DPO baseline is one run under theta's initialisation: the same at every evaluation,
    # and repeated bit for bit by a fresh meta-validation run under it here (the artifact's own
    # figures are repeated in the next test). The learned theta's figures differ from it.
    assert evals[0]["meta_valid/dpo_loss"] == evals[1]["meta_valid/dpo_loss"]
    again = setup.validator()(setup.theta0, jax.random.key(setup.config.seed + 1))
    assert again["loss"] == evals[-1]["meta_valid/dpo_loss"]
    assert again["accuracy"] == evals[-1]["meta_valid/dpo_accuracy"]
    assert evals[-1]["meta_valid/loss"] != evals[-1]["meta_valid/dpo_loss"]
    # The sanity check starts from the reference, where every margin is 0: DPO's loss is log 2.
    assert last["sanity/before"] == pytest.approx(np.log(2.0), abs=1e-6)
    art = artifact.load(os.path.join(workdir, "artifact"), expected_name="learned_preference_loss")
    assert art.settings == {"hidden": 16, "beta": 0.1, "input_scale": 4.0}
    assert art.config["objective"]["name"] == "learned_preference_loss"
    assert art.provenance["provenance"]["extra"]["flipped_fraction"] > 0.1


def test_artifact_loads_into_dpo_with_the_saved_loss(offline, setup):
    workdir, _ = offline
    path = os.path.join(workdir, "artifact")
    config = rlhf_configs.get_config("smoke")
    config.dpo.loss_type = "learned"
    config.dpo.learned_path = path  # --config.dpo.learned_path=W/artifact of experiments/rlhf.py
    loaded = rlhf_pipeline.preference_theta(config)
    saved = artifact.load(path).theta
    assert sorted(loaded) == ["b0", "b1", "w0", "w1"]
    for k in saved:
        np.testing.assert_array_equal(loaded[k], saved[k])
    # The loaded theta repeats the run's last meta-validation bit for bit: a fresh inner run
    # under it scores the meta-valid pairs as the run did under the theta it saved.
    records = metrics_lib.read_metrics(workdir)
    again = setup.validator()(loaded, jax.random.key(setup.config.seed + 1))
    assert again["loss"] == records[-1]["meta_valid/loss"]
    assert again["accuracy"] == records[-1]["meta_valid/accuracy"]
    # DPO's loss function with loss_type='learned' is the mean of f_theta(beta delta).
    rows = {k: jnp.asarray(v[:8]) for k, v in setup.train_rows.batch().items()}
    policy = jax.tree.map(lambda x: 1.1 * x, setup.reference)  # Off the reference: delta != 0.
    loss_fn = training.dpo_loss_fn(setup.model, beta=config.dpo.beta, loss_type="learned",
                               preference_theta=loaded)
    value = float(jax.jit(loss_fn)(policy, rows, setup.reference)[0])
    x = preference_problem.margins(setup.model, policy, setup.reference, rows, config.dpo.beta)
    np.testing.assert_allclose(value, float(jnp.mean(learned.preference_curve(loaded, x))),
                               rtol=1e-5)
    dpo_value = float(jnp.mean(-jax.nn.log_sigmoid(x)))
    assert abs(value - dpo_value) > 1e-4  # The learned curve, not DPO's.


def test_pairs_split_over_the_data_axis_match_one_device(setup):
    if jax.device_count() < 2:
        pytest.skip("needs several devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    assert setup.data_mesh is not None and setup.data_mesh.shape["data"] == jax.device_count()
    c = setup.config
    plain = preference_problem.preference_problem(
        setup.model, setup.optimizer, setup.train_rows, setup.valid_rows,
        reference_params=setup.reference, batch_size=c.inner.batch_size,
        valid_batch_size=c.inner.valid_batch_size, beta=c.inner.beta)
    theta = _linear_theta(0.2)
    key = jax.random.key(5)
    results = []
    for problem in (plain, setup.problem):
        run = jax.jit(lambda t, k, problem=problem: base.unroll(problem, t, problem.init(k), k, 2))
        inner, loss = run(theta, key)
        results.append((inner["params"], float(loss)))
    # The meta-loss is DPO's loss of the trained policy on a batch of gold-ordered validation
    # pairs (drawn with the second half of unroll's key): worked out from the margins. Away from
    # log 2, the loss at the reference whatever the pairs, so that the policy did train.
    valid = {k: jnp.asarray(v)
             for k, v in preference_problem.gold_ordered(setup.valid_rows).batch().items()}
    pairs = preference_problem.draw(valid, jax.random.split(key)[1], c.inner.valid_batch_size)
    x = np.asarray(preference_problem.margins(setup.model, results[0][0], setup.reference,
                                              pairs, c.inner.beta), np.float64)
    expected = np.mean(np.log1p(np.exp(-x)))  # -log sigmoid(x)
    np.testing.assert_allclose(results[0][1], expected, rtol=1e-5)
    assert abs(expected - np.log(2.0)) > 1e-4
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_resume_is_bitwise(offline, tmp_path, data_dir):
    workdir, _ = offline
    copy = tmp_path / "resumed"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "4")
    shutil.rmtree(copy / "artifact")
    preference_run.run(_config(data_dir), str(copy))
    theirs = artifact.load(os.path.join(workdir, "artifact")).theta
    ours = artifact.load(os.path.join(copy, "artifact")).theta
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name])
    # Steps 3 and 4 (their meta-validation included) again, the same to the last bit.
    assert metrics_lib.read_metrics(copy) == metrics_lib.read_metrics(workdir)


def test_bad_configs_are_user_errors(tmp_path, data_dir, offline):
    workdir, _ = offline
    cases = [
        (lambda c: c.update(mode="online"), "mode='online'.*--config.mode=offline"),
        (lambda c: c.objective.update(name="learned_token_loss"), "configs/meta_train.py"),
        (lambda c: c.objective.update(name="mle"), "learned_preference_loss"),
        (lambda c: c.preferences.update(flip_rate=0.5), "flip_rate"),
    ]
    for change, message in cases:
        config = _config(data_dir)
        change(config)
        with pytest.raises(cli.UserError, match=message):
            preference_run.run(config, str(tmp_path / "never"))
    token = meta_train_configs.get_config("smoke")
    token.objective.name = "learned_preference_loss"  # The token config has no pairs.
    with pytest.raises(cli.UserError, match="configs/meta_preference.py"):
        preference_run.run(token, str(tmp_path / "never"))
    config = _config(data_dir)  # The token loss's run refuses the preference config.
    config.objective.name = "learned_token_loss"
    with pytest.raises(cli.UserError, match="configs/meta_train.py"):
        meta_run.run(config, str(tmp_path / "never"))
    # A warm start from a token-loss artifact names the mismatch.
    wrong = tmp_path / "token_artifact"
    artifact.save(str(wrong), "learned_token_loss", {"w1": np.zeros(2)}, {}, {})
    config = _config(data_dir)
    config.objective.path = str(wrong)
    with pytest.raises(artifact.ArtifactError, match="learned_token_loss"):
        preference_run.run(config, str(tmp_path / "never"))
    assert not os.path.exists(tmp_path / "never" / "artifact")
    # The entry points print one line and exit 2.
    done = runs.run("experiments.meta_train", tmp_path / "cli", "configs/meta_preference.py:smoke",
                    "--config.mode=online", f"--config.data.data_dir={data_dir}")
    assert done.returncode == 2 and "error: mode='online'" in done.stderr
    done = runs.run("experiments.interpret_objective", tmp_path / "why",
                    "configs/meta_preference.py:smoke", f"--config.data.data_dir={data_dir}")
    assert done.returncode == 2 and "--config.interpret.artifact" in done.stderr


def _linear_theta(eps: float) -> dict:
    """A network whose h is eps * x to within 1e-6 over |x| < 10: f = cDPO's loss with label
    smoothing eps (-log sigmoid(x) + eps x)."""
    theta = learned.init_preference_loss(jax.random.key(0))
    u = np.asarray(theta["w0"][0])  # [H]
    # h(x / 4) = w1 . tanh(w0 x / 4) ~ (x / 4) 1e-3 (w1 . u) for tiny w0 = 1e-3 u.
    return dict(theta, w0=jnp.asarray(1e-3 * u[None]),
                w1=jnp.asarray(4e3 * eps * u / np.sum(u ** 2)))


def test_closed_forms_recover_a_known_curve():
    x = np.random.default_rng(0).normal(0.0, 2.0, 3000)
    values = interpret.preference_values(_linear_theta(0.2), x)
    np.testing.assert_allclose(values, -np.log(1 / (1 + np.exp(-x))) + 0.2 * x, atol=1e-4)
    fits = interpret.fit_preference_forms(x, values)
    by_form = {f["form"]: f for f in fits}
    assert by_form["dpo_linear"]["r2"] > 0.99999
    np.testing.assert_allclose([by_form["dpo_linear"]["params"][k] for k in "abc"],
                               [1.0, 0.0, 0.2], atol=5e-3)
    assert by_form["dpo_affine"]["r2"] < 0.995  # A tempered DPO cannot bend that way.
    # Beyond DPO's own term: cDPO's form explains all of the departure 0.2 x; a tempered DPO
    # explains 0.98 of f (measured) but only 0.93 of what f adds to DPO.
    assert by_form["dpo_linear"]["r2_beyond_dpo"] > 0.9999
    assert by_form["dpo_affine"]["r2_beyond_dpo"] < by_form["dpo_affine"]["r2"] - 0.03
    assert interpret.choose_preference_form(fits)["form"] == "dpo_linear"
    # DiscoPOP's log-ratio modulated loss is recovered by its own form.
    disco = dict(learned.PREFERENCE_FORM_INIT, w=1.0, log_t=np.log(0.5))
    values = np.asarray(learned.closed_form_preference_curve(
        {k: jnp.float32(v) for k, v in disco.items()}, jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(interpret.closed_form_values(disco, x), values, rtol=1e-5)
    fit = {f["form"]: f for f in interpret.fit_preference_forms(x, values)}
    assert fit["log_ratio_modulated"]["r2"] > 0.99999


def test_interpretation_plots_fits_and_saves_a_loadable_closed_form(setup, tmp_path,
                                                                     data_dir):
    path = str(tmp_path / "cdpo")
    artifact.save(path, "learned_preference_loss", _linear_theta(0.2), {"hidden": 16}, {})
    config = _config(data_dir)
    config.interpret.artifact = path
    summary = preference_run.interpret(config, str(tmp_path / "why"), setup)
    assert matplotlib.image.imread(str(tmp_path / "why" / "preference_loss.png")).shape[0] > 100
    with open(tmp_path / "why" / "fits.json") as f:
        written = json.load(f)
    assert written["chosen"] == summary["chosen"] and written["r2"] == summary["r2"] > 0.999
    assert summary["margins"] == config.interpret.snapshots * len(setup.train_rows)
    assert summary["margin_quantiles"]["1.0"] > summary["margin_quantiles"]["0.0"]
    # cDPO's form recovers the curve's slope from the margins the run visited.
    linear = next(f for f in summary["fits"] if f["form"] == "dpo_linear")
    assert linear["r2"] > 0.9999
    np.testing.assert_allclose(linear["params"]["c"], 0.2, atol=0.02)
    # The chosen closed form loads through DPO's learned_path and gives its own curve.
    rlhf_config = rlhf_configs.get_config("smoke")
    rlhf_config.dpo.loss_type = "learned"
    rlhf_config.dpo.learned_path = str(tmp_path / "why" / "closed_form")
    theta = rlhf_pipeline.preference_theta(rlhf_config)
    chosen = next(f for f in summary["fits"] if f["form"] == summary["chosen"])
    x = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(np.asarray(learned.preference_curve(theta, jnp.asarray(x))),
                               interpret.closed_form_values(chosen["params"], x), rtol=1e-5)
