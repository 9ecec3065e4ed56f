"""A learned-reward meta-training run (experiments/meta_train_reward.py).

Stages, in the workdir W (a re-run resumes; finished stages are not redone):
  W/rlhf/ (or config.rlhf_workdir)   the RLHF pipeline's own stages, reused as they are:
                      preferences.json (pairs of the SFT policy's samples, labelled by the noisy,
                      possibly length-biased labeler) and reward_model/ (`rlhf_pipeline`)
  W/checkpoints/      the outer state (theta, adam state, evosax state, step, rng) every
                      `outer.checkpoint_every` steps: a resumed run repeats the same numbers
  W/metrics.jsonl     per outer step: fitness/mean_gold and fitness/best_gold (the members' gold
                      graded scores), fitness/mean_proxy, fitness/mean_length, diverged, sigma,
                      grad_norm; every `outer.eval_every` steps the meta-validation run under
                      theta (valid/gold, valid/proxy, valid/length, valid/kl) beside the same run
                      under the reward model's score (theta_init: valid_rm/...)
  W/provenance.json   config, versions, mesh, the SFT and reward-model workdirs, per start
  W/final.json        at the end (`final_comparison`): RL on r_theta, on the reward model's
                      score and on the hand-set damping reward ((1 - baseline.damping) x score),
                      `final.runs` runs of each on the same prompts and keys, scored on the
                      meta-validation prompts (gold, proxy, length, KL; means with 95%
                      intervals, the gains over the SFT policy, whose difference is the proxy
                      gap); r_theta against the other two by paired t-tests, Holm-adjusted
                      together; the SFT policy; the wall time
  W/artifact/         the `learned_reward` artifact (theta, its hidden size, the config), written
                      atomically once the last outer step is done; a finished run started again
                      leaves it untouched, and a failed run never writes it

Outer loop: full-horizon ES with host-side fitness (`host_es`, Open-ES by default, Salimans et
al. 2017: antithetic pairs, centred ranks; sgd or adam on its step) on the inner problem of
`reward_problem` (RL of the SFT policy under r_theta, scored by the gold metric of its samples on
held-out prompts). Step s trains every member on the prompts of stream position s H with one
shared key (common random numbers), `inner.members_per_program` members to a vmapped program,
and scores them all on the same fitness prompts with the same sampling keys; meta-validation
always uses the same prompts (position VALID_POSITION), key and held-out evaluation prompts, so
its numbers compare across steps and against the reward-model baseline.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from learned_loss.core import cli, files, hosts, loop, policy, provenance, sharding
from learned_loss.core import train
from learned_loss.core import checkpoint as checkpoint_lib
from learned_loss.data import tasks
from learned_loss.meta import host_es, outer, reward_problem
from learned_loss.objectives import artifact, learned
from learned_loss.rlhf import training
from learned_loss.rlhf import data as rlhf_data
from learned_loss.rlhf import pipeline as rlhf_pipeline
from learned_loss.studies import statistics

ARTIFACT = "artifact"
FINAL = "final.json"
# Stream position of the meta-validation run's prompts: far past any outer step's.
VALID_POSITION = 10_000_000
# Seed offsets of the evaluators' prompt streams (rlhf_pipeline uses 1 and 2 for its own).
FITNESS_SEED_OFFSET, VALID_SEED_OFFSET, TRAIN_SEED_OFFSET = 3, 4, 5
SUMMARY_KEYS = ("gold_graded", "gold_exact_match", "proxy", "length", "finished", "kl")


def check_config(config) -> None:
    """Clear errors for settings the run cannot use."""
    if not config.rlhf.sft_from:
        raise cli.UserError("config.rlhf.sft_from is required: pass --config.rlhf.sft_from=<a "
                            "fine-tuning workdir> (experiments.finetune, e.g. "
                            "configs/finetune.py:words)")
    if config.inner.algorithm not in training.ALGORITHMS:
        raise cli.UserError(f"inner.algorithm={config.inner.algorithm!r}: choose one of "
                            f"{list(training.ALGORITHMS)}")
    if config.inner.horizon < 1 or config.outer.num_steps < 1:
        raise cli.UserError("inner.horizon and outer.num_steps must be >= 1")
    if config.rlhf.rl.kl_target > 0:
        raise cli.UserError("the inner RL runs use a fixed KL coefficient: set "
                            "rlhf.rl.kl_target=0")
    if config.inner.members_per_program < 0:
        raise cli.UserError(f"inner.members_per_program={config.inner.members_per_program}: "
                            f"use 0 (the whole population in one program) or a positive count")
    if config.final.runs < 1:
        raise cli.UserError(f"final.runs={config.final.runs}: the final comparison needs at "
                            f"least 1 run of each reward")
    if not 0.0 <= config.baseline.damping <= 1.0:
        raise cli.UserError(f"baseline.damping={config.baseline.damping}: the damping reward "
                            f"scales the score by 1 - damping; choose it in [0, 1]")
    p, strategy = config.estimator.population, config.estimator.strategy
    if strategy == "open_es" and (p < 2 or p % 2):
        raise cli.UserError(f"estimator.population={p}: antithetic Open-ES needs an even "
                            f"population >= 2")


class Setup:
    """The SFT policy, the reward model (trained or reused by the RLHF pipeline), the inner
    problem and its evaluators."""

    def __init__(self, config, workdir: str):
        rc = config.rlhf
        self.config = config
        self.sft = policy.load(rc.sft_from)
        self.mesh = sharding.config_mesh(rc.mesh)
        self.families = rlhf_pipeline.task_families(rc, self.sft.config)
        self.stage_dir = config.rlhf_workdir or os.path.join(workdir, "rlhf")
        files.makedirs(self.stage_dir)
        self.info = rlhf_pipeline.build_preferences(rc, self.sft, self.families, self.stage_dir)
        self.reward = rlhf_pipeline.train_reward_model(
            rc, self.sft, self.info, self.mesh, os.path.join(self.stage_dir, "reward_model"))
        self.reference = (self.sft.model, rlhf_pipeline.place_frozen(
            self.sft.params, self.sft.config, self.mesh))

        ic = config.inner
        try:
            settings = rlhf_pipeline.rl_settings(rc, ic.algorithm)
        except ValueError as e:
            raise cli.UserError(f"rlhf.rl: {e}") from None
        model, optimizer, init_state = self._initial_state(
            ic.algorithm, ic.horizon * rc.rl.epochs * rc.rl.minibatches)
        width = rlhf_pipeline.prompt_width(rc)
        stream = rlhf_data.PromptStream(
            self.families, difficulty=tasks.difficulty_range(rc.tasks.difficulty),
            seed=config.seed + TRAIN_SEED_OFFSET, global_batch_size=rc.rl.global_batch_size,
            width=width, kl_coef=rc.rl.kl_coef)

        def evaluator(section, offset):
            return rlhf_pipeline.Evaluator(
                rc, self.families, reference=self.reference, reward=self.reward, width=width,
                prompts_per_family=section.prompts_per_family,
                samples_per_prompt=section.samples_per_prompt, seed_offset=offset)

        self.valid_evaluator = evaluator(config.meta_valid, VALID_SEED_OFFSET)
        self.problem = reward_problem.RewardProblem(
            model=model, optimizer=optimizer, init_state=init_state,
            reference=self.reference, reward=self.reward, settings=settings, stream=stream,
            horizon=ic.horizon, evaluator=evaluator(config.fitness, FITNESS_SEED_OFFSET))

    def _initial_state(self, algorithm: str, updates: int):
        """(model, optimizer, TrainState) every inner run starts from: the SFT policy with a
        fresh optimizer state (PPO: the pipeline's stage, whose policy has a fresh value
        head)."""
        rc = self.config.rlhf
        if algorithm == "ppo":
            stage = rlhf_pipeline.Stage(rc, self.sft, self.mesh, "rl", True,
                                        rc.rl.global_batch_size, updates)
            return stage.model, stage.optimizer, stage.state
        optimizer = train.make_optimizer(rc.rl.optimizer, updates)
        params = self.reference[1]  # Shared: the inner runs never donate their state.
        state = train.TrainState(params=params, opt_state=jax.jit(optimizer.init)(params),
                                 step=jnp.zeros((), jnp.int32),
                                 rng=jax.random.key_data(jax.random.key(self.config.seed)))
        return self.sft.model, optimizer, state

    def provenance(self, start: int) -> dict:
        families = self.families  # its RLHF stages, RL inner runs, fitness and validation
        record = tasks.roles.merge(
            {"meta_train": families, "fitness": families, "meta_valid": families},
            tasks.roles.as_meta(provenance.read_extra(self.sft.workdir).get(
                tasks.roles.RECORD_KEY, {})))
        return provenance.collect(self.config, mesh=self.mesh, extra={
            "resumed_from_step": start, "families": list(self.families),
            tasks.roles.RECORD_KEY: record,
            "sft": {"workdir": self.sft.workdir, "step": self.sft.step},
            "rlhf_workdir": self.stage_dir, "preferences": self.info.provenance()})

    def validate(self, theta: Any, key: jax.Array) -> dict[str, float]:
        """The meta-validation run under theta (at `learned.init_reward`, exactly the reward
        model's score; one compiled inner run serves both)."""
        out = self.problem.run(theta, key, VALID_POSITION, evaluator=self.valid_evaluator)
        return {k: out.summary.get(k, float("nan")) for k in SUMMARY_KEYS + ("diverged",)}


def outer_optimizer(oc) -> optax.GradientTransformation:
    """The optimizer of theta on the ES step: outer.optimizer 'sgd' (a step proportional to
    the estimate, so that coordinates with no signal only random-walk) or 'adam' (each
    coordinate moves about lr per step, signal or not), after clipping the global norm."""
    if oc.optimizer == "adam":
        return outer.make_optimizer(oc)
    if oc.optimizer == "sgd":
        return optax.chain(optax.clip_by_global_norm(float(oc.grad_clip)), optax.sgd(oc.lr))
    raise cli.UserError(f"outer.optimizer={oc.optimizer!r}: use 'sgd' or 'adam'")


def finished(config, workdir: str) -> bool:
    """Whether the workdir holds the artifact and an outer checkpoint at outer.num_steps or
    later (then a re-run leaves everything as it is, and skips the set-up)."""
    return (files.isdir(os.path.join(workdir, ARTIFACT))
            and checkpoint_lib.reached(workdir, config.outer.num_steps))


def _population_metrics(outcomes: list[reward_problem.Outcome]) -> dict[str, float]:
    """Means over the members that did not diverge, and the best gold."""
    ok = [o.summary for o in outcomes if np.isfinite(o.loss)]
    if not ok:
        return {}
    mean = lambda k: float(np.mean([s[k] for s in ok]))
    return {"fitness/mean_gold": mean("gold_graded"),
            "fitness/best_gold": float(max(s["gold_graded"] for s in ok)),
            "fitness/mean_proxy": mean("proxy"), "fitness/mean_length": mean("length"),
            "fitness/mean_kl": mean("kl")}


def _mean_ci(runs: list[dict]) -> tuple[dict, dict]:
    cis = {k: statistics.mean_ci([r[k] for r in runs]) for k in runs[0]}
    return {k: m for k, (m, _) in cis.items()}, {k: h for k, (_, h) in cis.items()}


def final_comparison(s: Setup, theta: Any, runs: int, valid_key: jax.Array) -> dict:
    """r_theta, the reward model's score and the hand-set damping reward, each trained in the
    same `runs` runs and scored on the meta-validation prompts (module docstring).

    Run 0 is the meta-validation run (key `valid_key`, prompts from VALID_POSITION); run i > 0
    folds i into the key and starts i horizons later in the prompt stream. Per reward: the
    runs' figures, their means and 95% t half-widths, and the mean gains in gold and proxy over
    the SFT policy (a proxy gain with no gold gain is over-optimisation: the proxy gap). Tests:
    r_theta - reward model and r_theta - damping in gold, paired over the runs, Holm-adjusted.
    """
    rewards = {"learned_reward": theta, "reward_model": None,
               "damping": learned.damping_reward(s.config.baseline.damping,
                                                 s.config.reward.hidden)}
    sft = s.problem.evaluate(s.reference[1], s.valid_evaluator)
    per_run: dict[str, list[dict]] = {name: [] for name in rewards}
    for i in range(runs):
        key = valid_key if i == 0 else jax.random.fold_in(valid_key, i)
        position = VALID_POSITION + i * s.config.inner.horizon
        for name, t in rewards.items():
            out = s.problem.run(t, key, position, evaluator=s.valid_evaluator)
            per_run[name].append({k: out.summary.get(k, float("nan"))
                                  for k in SUMMARY_KEYS + ("diverged",)})
    out: dict[str, Any] = {"runs": runs, "damping_factor": float(s.config.baseline.damping),
                           "sft": sft}
    for name, rs in per_run.items():
        mean, ci = _mean_ci(rs)
        out[name] = dict(mean, ci95=ci, runs=rs,
                         gold_gain=mean["gold_graded"] - sft["gold_graded"],
                         proxy_gain=mean["proxy"] - sft["proxy"])
    gold = {name: dict(enumerate(r["gold_graded"] for r in rs)) for name, rs in per_run.items()}
    tests = [dict(statistics.paired(gold["learned_reward"], gold[other]),
                  name=f"learned_reward - {other}", metric="gold_graded")
             for other in ("reward_model", "damping")]
    for t, adj in zip(tests, statistics.holm([t["p"] for t in tests])):
        t["p_adjusted"] = adj
    out["tests"] = tests
    return out


def run(config, workdir: str) -> dict[str, Any]:
    """Meta-trains r_theta to `outer.num_steps`, resuming from the workdir. Returns the final
    comparison (final.json's contents; {} when stopped early or already finished)."""
    check_config(config)
    start_time = time.time()
    if finished(config, workdir):
        logging.info("meta-training in %s is finished; its artifact is kept as it is", workdir)
        return {}
    files.makedirs(workdir)
    s = Setup(config, workdir)
    oc, ec = config.outer, config.estimator
    theta0 = learned.init_reward(jax.random.key(config.seed), hidden=config.reward.hidden)
    es = host_es.host_es(theta0, population=ec.population, strategy=ec.strategy,
                         sigma=ec.sigma)
    optimizer = outer_optimizer(oc)
    state = host_es.init_state(es, optimizer, theta0, jax.random.key(config.seed))
    es_step = host_es.outer_step_fn(es, optimizer)
    valid_key = jax.random.key(config.seed + 1)
    baseline = s.validate(theta0, valid_key)  # The same run on the reward model's score.

    def step_fn(state, step):
        outcomes: list[reward_problem.Outcome] = []
        position = step * config.inner.horizon

        def population_loss(members, key):
            outcomes.extend(s.problem.run_population(members, key, position,
                                                     config.inner.members_per_program))
            return np.array([o.loss for o in outcomes], np.float32)

        state, metrics, _ = es_step(state, population_loss)
        metrics = dict(metrics)
        metrics.update(_population_metrics(outcomes))
        return state, metrics

    def evaluate(state):
        out = {f"valid/{k}": v for k, v in s.validate(state.theta, valid_key).items()}
        out.update({f"valid_rm/{k}": v for k, v in baseline.items()})
        return out

    # What the outer state's shapes depend on: a checkpoint of another is refused.
    model_dict = {"objective": learned.REWARD_ARTIFACT, "hidden": int(config.reward.hidden),
                  "strategy": ec.strategy}
    done = loop.drive(state, step_fn, workdir=workdir, num_steps=oc.num_steps,
                      model_config=model_dict, checkpoint_every=oc.checkpoint_every,
                      eval_every=oc.eval_every, evaluate=evaluate,
                      keep_checkpoints=oc.keep_checkpoints, provenance=s.provenance,
                      log_keys=("fitness/mean_gold", "fitness/best_gold",
                                "fitness/mean_length", "diverged", "valid/gold_graded",
                                "valid_rm/gold_graded"))
    if done.step < oc.num_steps:
        return {}
    theta = jax.tree.map(hosts.host_value, done.state.theta)
    final = dict(final_comparison(s, theta, config.final.runs, valid_key),
                 outer_steps=done.step, wall_time_s=time.time() - start_time)
    files.write_json(os.path.join(workdir, FINAL), final)
    artifact.save(os.path.join(workdir, ARTIFACT), learned.REWARD_ARTIFACT, theta,
                  {"features": list(learned.REWARD_FEATURES), "hidden": int(config.reward.hidden)},
                  config.to_dict(), dict(s.provenance(done.start), final=final))
    logging.info("wrote the learned reward to %s: gold %.3f on r_theta, %.3f on the reward "
                 "model, %.3f on the damping reward (means of %d runs)",
                 os.path.join(workdir, ARTIFACT), final["learned_reward"]["gold_graded"],
                 final["reward_model"]["gold_graded"], final["damping"]["gold_graded"],
                 config.final.runs)
    return final
