"""What a meta-training run of the learned preference loss needs: pairs, reference, problems.

`run.run_offline` drives the outer loop (checkpoints, bitwise resume, sanity checks, metrics,
the artifact) for every learned objective; `run` here hands it the preference loss's half,
`PreferenceSetup` (experiments/meta_train.py calls it when config.objective.name is
'learned_preference_loss'; configs/meta_preference.py):

  pairs       `preference_pairs` of the training families (`tasks.families`) and of the
              meta-valid families (`meta_valid.families`), labelled by the simulated labeler
              (`preferences.tau`, `length_bias`) and then a seeded fraction `preferences.flip_rate`
              of each train split flipped (`preference_problem.flip_labels`); the validation
              splits are read in the gold order.
  reference   the policy every inner run starts from and the frozen DPO reference: a fresh model
              trained `sft.steps` steps of MLE on the gold answers of both train splits' prompts
              (recomputed, bit for bit, at each start), or `inner.init_from`'s checkpoint.
  problems    `preference_problem` on the training families (the estimator's), on their clean
              pairs (the sanity check: a candidate must lower DPO's gold-order loss from log 2),
              and on the meta-valid families (meta-validation).

Meta-validation (`validator`): a fresh inner run of `meta_valid.horizon` steps under theta on the
meta-valid families' noisy pairs, then DPO's loss (Rafailov et al. 2023) and the preference
accuracy on all of their gold-ordered validation pairs: metrics meta_valid/loss and
meta_valid/accuracy, and meta_valid/dpo_loss and meta_valid/dpo_accuracy for the same run under
DPO (theta at its initialisation, where f_theta is DPO's loss).

The artifact is `learned_preference_loss` (f_theta(x) = -log sigmoid(x) + h_theta(x / 4), after
DiscoPOP, Lu et al. 2024), which DPO loads with `--config.dpo.loss_type=learned
--config.dpo.learned_path=WORKDIR/artifact` (experiments/rlhf.py).

Shapes: N pairs, W = data.seq_len + 1 tokens of one scored sequence, T = data.seq_len.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from learned_loss import objectives
from learned_loss.core import cli, files, hosts, provenance, sharding, train
from learned_loss.core import model as model_lib
from learned_loss.data import paths, preference_pairs, tasks, training_rows
from learned_loss.meta import base, fit, lm_problem, preference_problem
from learned_loss.meta import run as run_lib
from learned_loss.objectives import artifact, learned

NAME = "learned_preference_loss"


def run(config, workdir: str) -> dict[str, float]:
    """Meta-trains the learned preference loss to outer.num_steps (resuming from the workdir) and
    writes WORKDIR/artifact. Returns the last metrics ({} when the run was finished already)."""
    return run_lib.run_offline(config, workdir, PreferenceSetup(config))


def check_config(config) -> None:
    """A UserError naming the fix for settings the preference run cannot use."""
    if "preferences" not in config:
        raise cli.UserError(f"{NAME} is meta-trained on preference pairs: use "
                            f"--config=configs/meta_preference.py:tiny (this config has no "
                            f"`preferences` section)")
    if config.objective.name != NAME:
        raise cli.UserError(f"this config meta-trains {NAME}; got objective="
                            f"{config.objective.name!r} (meta-train learned_token_loss with "
                            f"--config=configs/meta_train.py:tiny)")
    if config.mode != "offline":
        raise cli.UserError(f"mode={config.mode!r}: the learned preference loss is meta-trained "
                            f"offline only (online meta-weighting is for learned_token_loss); "
                            f"set --config.mode=offline")
    p = config.preferences
    if not 0.0 <= p.flip_rate < 0.5:
        raise cli.UserError(f"preferences.flip_rate={p.flip_rate}: use a fraction in [0, 0.5) "
                            f"(at 0.5 the labels carry no signal)")
    if config.sft.steps < 0:
        raise cli.UserError(f"sft.steps={config.sft.steps}: use 0 (a fresh reference) or more")


def pairs_args(config, families: Sequence[str]) -> dict[str, Any]:
    """build_preference_pairs's arguments (but data_dir) for `families`."""
    p, seq_len = config.preferences, config.data.seq_len
    return dict(families=tuple(families), pairs_per_family=p.pairs_per_family,
                difficulty=tuple(p.difficulty), tau=p.tau, length_bias=p.length_bias,
                length_scale=p.length_scale or seq_len, seed=p.seed, seq_len=seq_len,
                splits={"train": 1.0 - config.data.valid_fraction,
                        "validation": config.data.valid_fraction})


def build_pairs(config, families: Sequence[str]
                ) -> tuple[preference_problem.PairRows, preference_problem.PairRows, list, Any]:
    """(noisy train rows, validation rows as labelled, decoded train records, PairsInfo) of
    `families`; the train labels are flipped with `preferences.flip_rate`."""
    seq_len = config.data.seq_len
    try:
        info = hosts.first_on_process_zero(lambda: preference_pairs.build_preference_pairs(
            paths.data_dir(config.data.data_dir), **pairs_args(config, families)), "pairs built")
    except ValueError as e:  # A labeler knob or split fraction out of range.
        raise cli.UserError(f"preferences: {e}") from None
    train_records = preference_pairs.load_split(info, "train")
    train = preference_problem.encode_records(train_records, seq_len)
    p = config.preferences
    train = preference_problem.flip_labels(train, p.flip_rate, p.seed)
    valid = preference_problem.encode_records(preference_pairs.load_split(info, "validation"),
                                              seq_len)
    decoded = sorted((preference_pairs.decode_record(r) for r in train_records),
                     key=lambda r: (r["family"], r["index"]))
    return train, valid, decoded, info


def gold_demonstrations(records: Sequence[Mapping[str, Any]],
                        seq_len: int) -> training_rows.Demonstrations:
    """The gold answer of each pair's prompt as a demonstration (rows [N, T]), for the SFT of
    the reference policy."""
    rows = [tasks.encode_example(tasks.Example(r["family"], r["prompt"], r["gold_answer"],
                                               r["difficulty"], r["phrasing"]), seq_len)
            for r in records]
    return training_rows.Demonstrations(
        inputs=np.stack([r["inputs"] for r in rows]).astype(np.int32),
        targets=np.stack([r["targets"] for r in rows]).astype(np.int32),
        mask=np.stack([r["mask"] for r in rows]).astype(np.float32),
        corrupted=np.zeros(len(rows), bool))


def sft_reference(model: model_lib.Model, demonstrations: training_rows.Demonstrations, *,
                  steps: int, lr: float, batch_size: int, seq_len: int, key: jax.Array) -> Any:
    """A fresh model (from `key`) after `steps` steps of MLE on `demonstrations` (0: the fresh
    model). A pure function of its arguments, so every start of a run gets the same params."""
    optimizer = train.make_optimizer(train.constant_adam(lr), differentiable=True)
    runner = fit.plain(lambda rows: lm_problem.lm_problem(
        model, optimizer, objectives.build("mle"), rows, rows, batch_size=batch_size,
        valid_batch_size=batch_size, seq_len=seq_len))
    return runner.inner(fit.fit_one(runner, (), key, demonstrations, steps))["params"]


class PreferenceSetup:
    """The preference loss's counterpart of `run.Setup` (what `run.run_offline` reads)."""

    baseline = "dpo"  # Meta-validation also runs theta's initialisation, which is DPO.

    def __init__(self, config):
        check_config(config)
        self.config = config
        self.mesh = sharding.config_mesh(config.mesh)
        self.pop_mesh = self.mesh if self.mesh.shape.get("pop", 1) > 1 else None
        self.data_mesh = self.mesh if self.mesh.shape.get("data", 1) > 1 else None
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.model_cfg = model_lib.ModelConfig.from_config(config.model)
        self.model = model_lib.build(self.model_cfg)
        self.theta0, self.settings = initial_theta(config)
        families, valid_families = run_lib.meta_families(config)
        self.families, self.valid_families = families, valid_families
        self.train_rows, self.valid_rows, records, self.info = build_pairs(config, families)
        self.mv_train, self.mv_valid, mv_records, self.mv_info = build_pairs(config,
                                                                             valid_families)
        self.reference = self.make_reference(records + mv_records)
        self.optimizer = train.make_optimizer(train.constant_adam(config.inner.lr),
                                              differentiable=True)
        self.problem = self.make_problem(self.train_rows, self.valid_rows)
        # The sanity check trains on the clean (gold-ordered) validation pairs.
        self.clean_problem = self.make_problem(
            preference_problem.gold_ordered(self.valid_rows), self.valid_rows)
        self.valid_problem = self.make_problem(self.mv_train, self.mv_valid)

    def make_reference(self, records: Sequence[Mapping[str, Any]]) -> Any:
        c = self.config
        loaded = run_lib.initial_params(c, self.model)
        if loaded is not None:
            return loaded
        return sft_reference(self.model, gold_demonstrations(records, c.data.seq_len),
                             steps=c.sft.steps, lr=c.sft.lr, batch_size=c.sft.batch_size,
                             seq_len=c.data.seq_len, key=jax.random.key(c.seed))

    def make_problem(self, train_rows, valid_rows) -> base.InnerProblem:
        c = self.config
        return preference_problem.preference_problem(
            self.model, self.optimizer, train_rows, valid_rows, reference_params=self.reference,
            batch_size=c.inner.batch_size, valid_batch_size=c.inner.valid_batch_size,
            beta=c.inner.beta, mesh=self.data_mesh)

    def validator(self) -> Callable[[Any, jax.Array], dict[str, float]]:
        """(theta, key) -> {'loss', 'accuracy'}: DPO's loss and the preference accuracy on all
        gold-ordered meta-valid pairs after a fresh inner run of meta_valid.horizon steps."""
        problem, horizon = self.valid_problem, self.config.meta_valid.horizon
        model, beta = self.model, self.config.inner.beta
        # Replicated like theta (the outer state is), so that one program reads them all.
        rows = jax.device_put(preference_problem.gold_ordered(self.mv_valid).batch(),
                              self.replicated)
        reference = jax.device_put(self.reference, self.replicated)

        @jax.jit
        def run(theta, key, reference, rows):  # Arrays as arguments: XLA folds no constants.
            init_key, run_key = jax.random.split(key)
            inner = base.unroll(problem, theta, problem.init(init_key), run_key, horizon)[0]
            return preference_problem.gold_scores(model, inner["params"], reference, rows, beta)

        def validate(theta, key):
            theta = jax.device_put(theta, self.replicated)  # As the outer state holds it.
            scores = run(theta, key, reference, rows)
            return {k: float(v) for k, v in jax.device_get(scores).items()}

        return validate

    def provenance(self, mode: str, start: int) -> dict:
        return provenance.collect(self.config, corpus_hash=self.info.config_hash, mesh=self.mesh,
                                  extra={"mode": mode, "resumed_from_step": start,
                                         "objective": NAME, "families": list(self.families),
                                         "meta_valid_families": list(self.valid_families),
                                         tasks.roles.RECORD_KEY: run_lib.role_record(
                                             self.config),
                                         "preferences": self.info.provenance(),
                                         "meta_valid_preferences": self.mv_info.provenance(),
                                         "flipped_fraction": float(self.train_rows.flipped.mean()),
                                         "meta_valid_flipped_fraction":
                                             float(self.mv_train.flipped.mean())})

    def save_artifact(self, workdir: str, theta: Any, extra: dict) -> str:
        path = os.path.join(workdir, run_lib.ARTIFACT)
        artifact.save(path, NAME, jax.tree.map(hosts.host_value, theta), self.settings,
                      self.config.to_dict(), dict(extra, provenance=self.provenance("", 0)))
        return path


def initial_theta(config) -> tuple[dict, dict]:
    """(theta at the start of meta-training, the artifact's settings): DPO's initialisation of
    width objective.hidden, or the artifact at objective.path (a warm start)."""
    o = config.objective
    settings = {"hidden": int(o.hidden), "beta": float(config.inner.beta),
                "input_scale": learned.PREFERENCE_INPUT_SCALE}
    if not o.path:
        return learned.init_preference_loss(jax.random.key(0), int(o.hidden)), settings
    found = artifact.load(o.path, expected_name=NAME)
    theta = {k: jnp.asarray(v) for k, v in found.theta.items()}
    if set(theta) != {"w0", "b0", "w1", "b1"}:
        raise artifact.ArtifactError(f"objective.path: the artifact at {o.path!r} holds a "
                                     f"closed form ({sorted(theta)}), not the network; warm-start "
                                     f"from a meta-training run's artifact")
    settings["hidden"] = int(theta["b0"].shape[0])
    return theta, settings


# ---- interpretation (experiments/interpret_objective.py) ---------------------------------------


def run_margins(setup: PreferenceSetup, theta: Any, steps: int, snapshots: int,
                chunk: int = 256) -> np.ndarray:
    """[snapshots * N] the margins beta * delta of all N training pairs (as labelled) at
    `snapshots` evenly spaced points of a fresh inner run of `steps` steps under theta: the
    inputs f_theta meets while it trains a policy."""
    if steps < snapshots or snapshots < 1:
        raise cli.UserError(f"interpret.steps={steps} and interpret.snapshots={snapshots}: "
                            f"need 1 <= snapshots <= steps")
    problem, beta, model = setup.problem, setup.config.inner.beta, setup.model
    margin_fn = jax.jit(lambda p, ref, rows: preference_problem.margins(model, p, ref, rows,
                                                                          beta))
    rows = setup.train_rows.batch()
    runner = fit.plain(lambda _: problem)
    out = []

    def snapshot(step, carry):
        del step
        params = runner.inner(carry)["params"]
        for start in range(0, len(setup.train_rows), chunk):
            part = {k: jnp.asarray(v[start:start + chunk]) for k, v in rows.items()}
            out.append(np.asarray(margin_fn(params, setup.reference, part)))

    # The run in `snapshots` segments (fit.bounds), read after each one and at the end.
    final = fit.fit_one(runner, theta, jax.random.key(setup.config.seed + 2), (), steps,
                        segments=snapshots, on_segment=snapshot)
    snapshot(steps, final)
    return np.concatenate(out)


def interpret(config, workdir: str, setup: PreferenceSetup | None = None) -> dict:
    """Plots the artifact's f_theta against DPO's loss at the margins an inner run under it
    visits, fits the closed forms there, writes WORKDIR/{preference_loss.png, fits.json,
    closed_form}. Returns the summary written to fits.json. setup: `PreferenceSetup(config)`,
    built when not given."""
    # Deferred: meta-training needs neither the plots (matplotlib) nor the fits (scipy).
    from learned_loss.meta import interpret as interpret_lib

    path = config.interpret.artifact
    if not path:
        raise cli.UserError("set --config.interpret.artifact to the learned_preference_loss "
                            "artifact to interpret (WORKDIR/artifact of a meta-training run)")
    found = artifact.load(path, expected_name=NAME)
    theta = {k: jnp.asarray(v) for k, v in found.theta.items()}
    files.makedirs(workdir)
    setup = PreferenceSetup(config) if setup is None else setup
    x = run_margins(setup, theta, config.interpret.steps, config.interpret.snapshots)
    values = interpret_lib.preference_values(theta, x)
    fits = interpret_lib.fit_preference_forms(x, values)
    chosen = interpret_lib.choose_preference_form(fits)
    interpret_lib.save_preference_closed_form(os.path.join(workdir, "closed_form"), chosen, path,
                                              found.settings)
    interpret_lib.plot_preference_loss(theta, os.path.join(workdir, "preference_loss.png"),
                                       margins=x, fit=chosen)
    flipped = np.tile(setup.train_rows.flipped, config.interpret.snapshots)  # [len(x)]
    summary = {"artifact": path, "fits": fits, "chosen": chosen["form"],
               "r2": chosen["r2"], "r2_beyond_dpo": chosen["r2_beyond_dpo"],
               "margins": int(len(x)),
               "margin_quantiles": {str(q): float(np.quantile(x, q))
                                    for q in (0.0, 0.05, 0.5, 0.95, 1.0)},
               "mean_margin_clean": float(np.mean(x[~flipped])),
               "mean_margin_flipped": float(np.mean(x[flipped])) if flipped.any() else None}
    files.write_json(os.path.join(workdir, "fits.json"), summary)
    provenance.write(workdir, provenance.collect(config, extra={"artifact": path}))
    return summary
