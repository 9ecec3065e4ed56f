"""A meta-training run (experiments/meta_train.py): data, inner problem, outer loop, artifact.

Offline (`run_offline`): outer steps of the configured estimator over truncated inner runs on the
training families' noisy demonstrations, each candidate screened by a sanity run on clean
demonstrations, meta-validated every `eval_every` steps by a fresh inner run on the meta-valid
families, checkpointed whole (bitwise resume), and written as an artifact that fine-tuning loads
(`--config.objective=learned_token_loss --config.objective.path=WORKDIR/artifact`).

Online (`run_online`): one model trained with Meta-Weight-Net-style alternation
(`outer.online_step`); its theta is written as an artifact too, and the trained model is scored
by greedy exact match on test inputs, which its meta-objective never reads (`online_eval.json`).

Workdir: checkpoints/, metrics.jsonl (+ TensorBoard), provenance.jsonl, artifact/ and, online,
online_eval.json. Metrics: meta_loss, grad_norm, diverged (fraction of inner runs that produced
NaN/inf), skipped (non-finite meta-gradients), rejected (candidates failing the sanity check),
meta_valid/nll (and meta_valid/mle_nll, the same run under MLE), sanity/before, sanity/after.

The objective's half of an offline run (data, inner problems, meta-validation, artifact) is a
setup: `Setup` here for learned_token_loss, `preference_run.PreferenceSetup` for
learned_preference_loss (configs/meta_preference.py), which passes its own to `run_offline`.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from learned_loss import objectives
from learned_loss.core import cli, evaluation, files, hosts, loop, policy, pretraining
from learned_loss.core import provenance
from learned_loss.core import sharding, train
from learned_loss.core import checkpoint as checkpoint_lib
from learned_loss.core import model as model_lib
from learned_loss.data import instruction_tasks, paths, tasks, text_corpus, training_rows
from learned_loss.meta import base, lm_problem, outer
from learned_loss.objectives import artifact

ARTIFACT = "artifact"


def meta_families(config) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(families of the inner runs, meta-validation families) of a meta-training config
    (configs/meta_train.py, configs/meta_preference.py), resolved by `tasks.roles` (held-out
    families refused); both are required."""
    if not config.tasks.families or not config.meta_valid.families:
        raise cli.UserError("meta-training needs tasks.families (its inner runs' families) and "
                            "meta_valid.families (its validation's); set both")
    return (tasks.roles.resolve(config.tasks, "meta_train", config.tasks.families),
            tasks.roles.resolve(config.tasks, "meta_valid", config.meta_valid.families))


def role_record(config) -> dict[str, list[str]]:
    """The families by role of a meta-training config (empty on text)."""
    if config.data.get("source", "tasks") == "text":
        return {}
    train, valid = meta_families(config)
    return tasks.roles.record({"meta_train": train, "meta_valid": valid})


def rows_args(config, families: Sequence[str]) -> dict[str, Any]:
    """build_instruction_tasks's arguments (but data_dir) for `families`: the train split
    noisy, clean validation (the meta-objective) and test splits (what an online run is
    scored on)."""
    t, d = config.tasks, config.data
    return dict(families=tuple(families), examples_per_family=t.examples_per_family,
                difficulty=tasks.difficulty_range(t.difficulty), label_noise=t.label_noise,
                seed=t.seed, seq_len=d.seq_len, noise_kinds=tuple(t.noise_kinds),
                splits={"train": 1.0 - d.valid_fraction - d.test_fraction,
                        "validation": d.valid_fraction, "test": d.test_fraction})


def build_rows(config, families: Sequence[str]
               ) -> tuple[training_rows.Demonstrations, training_rows.Demonstrations, Any]:
    """(noisy train rows, clean validation rows, TasksInfo) of `families`."""
    info = hosts.first_on_process_zero(lambda: instruction_tasks.build_instruction_tasks(
        paths.data_dir(config.data.data_dir), **rows_args(config, families)), "tasks built")
    seq_len = config.data.seq_len
    train = training_rows.encode_records(instruction_tasks.load_split(info, "train"), seq_len)
    valid = training_rows.encode_records(instruction_tasks.load_split(info, "validation"), seq_len)
    return train, valid, info


def text_rows(config):
    """(train rows, validation rows, meta-valid train rows, meta-valid validation rows,
    CorpusInfo) from the text corpus (data.source='text'): inner runs pre-train on windows of
    the train split and are scored by the NLL of every token of validation-split windows;
    meta-validation uses other windows of both splits."""
    d = config.data
    corpus = pretraining.prepare_corpus(config, d.corpus_valid_fraction)
    train = text_corpus.load_split(corpus, "train")
    valid = text_corpus.load_split(corpus, "validation")
    n, m = d.windows, d.valid_windows
    return (training_rows.text_windows(train, d.seq_len, n, 0.0), training_rows.text_windows(valid, d.seq_len, m, 0.0),
            training_rows.text_windows(train, d.seq_len, n, 0.5), training_rows.text_windows(valid, d.seq_len, m, 0.5),
            corpus)


def eval_examples(info, per_family: int) -> list[tasks.Example]:
    """Up to `per_family` clean test examples of each family: inputs that neither the inner
    runs nor the meta-objective (the validation split) saw."""
    records = instruction_tasks.load_split(info, "test")
    chosen: dict[str, list] = {}
    for i in range(len(records)):
        record = instruction_tasks.decode_record(records[i])
        chosen.setdefault(record["family"], []).append(record)
    out = []
    for family in sorted(chosen):
        rows = sorted(chosen[family], key=lambda r: r["index"])[:per_family]
        out.extend(instruction_tasks.to_example(r, gold=True) for r in rows)
    return out


def local_members(mesh: jax.sharding.Mesh) -> list[int]:
    """The indices along the mesh's `pop` axis that this process's devices hold: the share of
    the population whose inner runs it computes (all of them in a single-process run)."""
    pop = mesh.axis_names.index("pop")
    mine = {d.id for d in jax.local_devices()}
    return sorted({int(i[pop]) for i, d in np.ndenumerate(mesh.devices) if d.id in mine})


def initial_params(config, model: model_lib.Model):
    """The params every inner run starts from: the newest checkpoint of config.inner.init_from
    (a pre-training or fine-tuning workdir of the same model), or None (a fresh initialisation
    per run)."""
    if not config.inner.init_from:
        return None
    source = policy.load(config.inner.init_from)
    theirs = model_lib.ModelConfig.from_config(source.config.model)
    if theirs != model_lib.ModelConfig.from_config(config.model):
        raise cli.UserError(f"inner.init_from={config.inner.init_from!r} holds a different model "
                            f"({theirs}); set config.model to it or start from another run")
    return source.params


class Setup:
    """What both modes share: model, objective, inner problems and evaluation examples."""

    baseline = "mle"  # Meta-validation also runs theta's initialisation, which is MLE.

    def __init__(self, config):
        self.config = config
        if config.objective.name != "learned_token_loss":
            raise cli.UserError(f"meta-training learns a learned_token_loss (or, with "
                                f"configs/meta_preference.py, a learned_preference_loss); got "
                                f"objective={config.objective.name!r}")
        if "preferences" in config:
            raise cli.UserError("this config (configs/meta_preference.py) meta-trains the "
                                "learned_preference_loss; meta-train learned_token_loss with "
                                "--config=configs/meta_train.py:tiny")
        self.mesh = sharding.config_mesh(config.mesh)
        self.pop_mesh, self.data_mesh = submeshes(self.mesh)
        if jax.process_count() > 1 and self.pop_mesh is not None:
            logging.info("population axis pop=%d spans %d processes; this one runs pop %s",
                         self.mesh.shape["pop"], jax.process_count(), local_members(self.mesh))
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.model_cfg = model_lib.ModelConfig.from_config(config.model)
        self.model = model_lib.build(self.model_cfg)
        self.objective = objectives.build(config.objective)
        self.theta0 = self.objective.theta
        # What rebuilds the loss from the artifact (a warm start keeps its artifact's settings).
        if config.objective.path:
            self.settings = artifact.load(config.objective.path).settings
        else:
            self.settings = {"features": list(config.objective.features),
                             "hidden": int(config.objective.hidden)}
            self.settings.update({k: config.objective[k] for k in objectives.TOKEN_LOSS_OPTIONS
                                  if k in config.objective})
        self.optimizer = inner_optimizer(config)
        if config.data.get("source", "tasks") == "text":
            if config.mode != "offline":
                raise cli.UserError("online meta-weighting scores exact match on task "
                                    "families; with data.source='text' use mode='offline'")
            rows = text_rows(config)
            self.train_rows, self.valid_rows, self.mv_train, self.mv_valid, self.info = rows
            self.mv_info = self.info
            self.data_hash = self.info.corpus_hash
            families = valid_families = ()
        else:
            families, valid_families = meta_families(config)
            self.train_rows, self.valid_rows, self.info = build_rows(config, families)
            self.mv_train, self.mv_valid, self.mv_info = build_rows(config, valid_families)
            self.data_hash = self.info.config_hash
        self.init_params = initial_params(config, self.model)
        self.problem = self.make_problem(self.train_rows, self.valid_rows)
        # The sanity check trains on clean demonstrations (the validation inputs).
        self.clean_problem = self.make_problem(self.valid_rows, self.valid_rows)
        self.valid_problem = self.make_problem(self.mv_train, self.mv_valid)
        self.families, self.valid_families = families, valid_families

    def make_problem(self, train_rows, valid_rows) -> base.InnerProblem:
        return make_problem(self.config, self.model, self.optimizer, self.objective, train_rows,
                            valid_rows, self.init_params, self.data_mesh)

    def validator(self):
        """(theta, key) -> {'nll'}: the clean answer NLL on the meta-valid families after a fresh
        inner run of meta_valid.horizon steps."""
        run = _validation_run(self.valid_problem, self.config.meta_valid.horizon)
        # Replicated like theta (the outer state is), so that theta's initialisation and every
        # outer step's theta are read by one compiled program.
        return lambda theta, key: {
            "nll": float(run(jax.device_put(theta, self.replicated), key))}

    def provenance(self, mode: str, start: int) -> dict:
        return provenance.collect(self.config, corpus_hash=self.data_hash, mesh=self.mesh,
                                  extra={"mode": mode, "resumed_from_step": start,
                                         "families": list(self.families),
                                         "meta_valid_families": list(self.valid_families),
                                         tasks.roles.RECORD_KEY: role_record(self.config),
                                         "source": self.config.data.get("source", "tasks"),
                                         "tasks": self.info.provenance(),
                                         "meta_valid_tasks": self.mv_info.provenance()})

    def save_artifact(self, workdir: str, theta: Any, extra: dict) -> str:
        path = os.path.join(workdir, ARTIFACT)
        artifact.save(path, "learned_token_loss", jax.tree.map(hosts.host_value, theta),
                      self.settings, self.config.to_dict(),
                      dict(extra, provenance=self.provenance("", 0)))
        return path


def submeshes(mesh: jax.sharding.Mesh):
    """(the mesh when its `pop` axis splits the population, else None; the mesh when its `data`
    axis splits inner batches, else None): what the estimator and the inner problem get."""
    return (mesh if mesh.shape.get("pop", 1) > 1 else None,
            mesh if mesh.shape.get("data", 1) > 1 else None)


def inner_optimizer(config):
    """The inner runs' differentiable optimizer: clipped Adam at inner.lr, eps_root > 0."""
    return train.make_optimizer(train.constant_adam(config.inner.lr), differentiable=True)


def make_problem(config, model, optimizer, objective, train_rows, valid_rows, init_params,
                 data_mesh) -> base.InnerProblem:
    """The inner problem of a meta-training config on these rows (`lm_problem`)."""
    return lm_problem.lm_problem(
        model, optimizer, objective, train_rows, valid_rows, batch_size=config.inner.batch_size,
        valid_batch_size=config.inner.valid_batch_size, seq_len=config.data.seq_len,
        init_params=init_params, mesh=data_mesh)


def init_outer_state(estimator, optimizer, theta0, key, mesh: jax.sharding.Mesh, pop_mesh):
    """The first outer state, placed by `base.population_shardings`: replicated, as a restored
    checkpoint is, so that a resumed run reuses the same compiled programs; with a `pop` axis
    the population's inner runs are initialised in place, split over it (none on one chip)."""
    init = functools.partial(outer.init, estimator, optimizer, theta0)
    shardings = base.population_shardings(jax.eval_shape(init, key), mesh)
    if pop_mesh is None:
        return jax.device_put(init(key), shardings)
    return jax.jit(init, out_shardings=shardings)(key)


def _validation_run(problem: base.InnerProblem, horizon: int):
    """(theta, key) -> meta-loss after a fresh inner run of `horizon` steps."""

    def run(theta, key):
        init_key, run_key = jax.random.split(key)
        return base.unroll(problem, theta, problem.init(init_key), run_key, horizon)[1]

    return jax.jit(run)


def run_offline(config, workdir: str, setup=None) -> dict[str, float]:
    """Meta-trains theta to `outer.num_steps`, resuming from the workdir. Returns the last
    metrics. setup: the objective's half (default: `Setup(config)`, the token loss)."""
    s = Setup(config) if setup is None else setup
    oc = config.outer
    if (files.isdir(os.path.join(workdir, ARTIFACT))
            and checkpoint_lib.reached(workdir, oc.num_steps)):
        logging.info("meta-training in %s is finished; its artifact is kept as it is", workdir)
        return {}
    estimator = outer.make_estimator(config.estimator, s.problem, s.pop_mesh)
    optimizer = outer.make_optimizer(oc)
    theta0 = s.theta0
    # Replicated over the mesh, as a restored checkpoint is (the population and batch axes are
    # split inside the step), but for the population's runs over a `pop` axis.
    state = init_outer_state(estimator, optimizer, theta0, jax.random.key(config.seed), s.mesh,
                             s.pop_mesh)
    outer_step = jax.jit(outer.outer_step(estimator, optimizer))
    sanity = jax.jit(outer.sanity_check(s.clean_problem, oc.sanity_steps))
    validate = s.validator()
    valid_key = jax.random.key(config.seed + 1)
    # The same validation under theta's initialisation (MLE or DPO), for comparison.
    baseline = {f"meta_valid/{s.baseline}_{k}": v for k, v in validate(theta0, valid_key).items()}
    rejected = 0

    def step_fn(state, step):
        nonlocal rejected
        candidate, metrics = outer_step(state)
        passed, before, after = sanity(candidate.theta, jax.random.fold_in(valid_key, step))
        if bool(passed):
            state = candidate
        else:  # Keep the old theta and optimizer state; the estimator and step move on.
            rejected += 1
            state = candidate._replace(theta=state.theta, opt_state=state.opt_state)
        metrics = dict(metrics)
        metrics.update({"rejected": float(not bool(passed)), "sanity/before": before,
                        "sanity/after": after, "rejected_total": float(rejected)})
        return state, metrics

    def evaluate(state):
        out = {f"meta_valid/{k}": v for k, v in validate(state.theta, valid_key).items()}
        out.update(baseline)
        return out

    done = loop.drive(state, step_fn, workdir=workdir, num_steps=oc.num_steps,
                      model_config=config.model.to_dict(), checkpoint_every=oc.checkpoint_every,
                      log_every=oc.log_every, eval_every=oc.eval_every, evaluate=evaluate,
                      keep_checkpoints=oc.keep_checkpoints,
                      provenance=lambda start: s.provenance("offline", start),
                      log_keys=("meta_loss", "grad_norm", "diverged", "meta_valid/"))
    if done.step >= oc.num_steps:
        path = s.save_artifact(workdir, done.state.theta, {
            "mode": "offline", "outer_steps": done.step, "last_metrics": done.last})
        logging.info("wrote the learned objective to %s", path)
    return done.last


def run_online(config, workdir: str) -> dict[str, Any]:
    """Trains one model with online meta-weighting to `online.num_steps`; scores it by greedy
    exact match on test inputs. Returns the evaluation."""
    s = Setup(config)
    oc = config.online
    optimizer = outer.make_optimizer(config.outer)
    online_step = jax.jit(outer.online_step(s.problem, optimizer, lookahead=oc.lookahead,
                                            remat=config.estimator.remat))
    key = jax.random.key(config.seed)
    theta = jax.tree.map(jnp.asarray, s.objective.theta)
    state = jax.device_put({"theta": theta, "opt_state": optimizer.init(theta),
                            "inner": s.problem.init(jax.random.fold_in(key, 0)),
                            "step": jnp.zeros((), jnp.int32)}, s.replicated)

    def step_fn(state, step):
        theta, opt_state, inner, metrics = online_step(
            state["theta"], state["opt_state"], state["inner"], jax.random.fold_in(key, step + 1))
        return {"theta": theta, "opt_state": opt_state, "inner": inner,
                "step": jnp.asarray(step + 1, jnp.int32)}, metrics

    done = loop.drive(state, step_fn, workdir=workdir, num_steps=oc.num_steps,
                      model_config=config.model.to_dict(), checkpoint_every=oc.checkpoint_every,
                      log_every=oc.log_every, keep_checkpoints=2,
                      provenance=lambda start: s.provenance("online", start),
                      log_keys=("meta_loss",))
    if done.step < oc.num_steps:
        return {}
    start_time = time.time()
    examples = eval_examples(s.info, config.eval.prompts_per_family)
    result = evaluation.evaluate(s.model, done.state["inner"]["params"], examples,
                                 batch_size=config.inner.batch_size,
                                 max_new_tokens=config.eval.max_new_tokens)
    result["eval_seconds"] = time.time() - start_time
    files.write_json(os.path.join(workdir, "online_eval.json"), result)
    s.save_artifact(workdir, done.state["theta"], {"mode": "online", "inner_steps": done.step})
    return result


def run(config, workdir: str):
    if config.mode == "offline":
        return run_offline(config, workdir)
    if config.mode == "online":
        return run_online(config, workdir)
    raise cli.UserError(f"mode must be 'offline' or 'online', got {config.mode!r}")
