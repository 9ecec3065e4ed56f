"""The RLHF pipeline behind `experiments/rlhf.py`: SFT policy -> preference pairs from its own
samples -> reward model -> PPO / RLOO / GRPO / DPO -> reward over-optimization analysis.

`run(config, workdir)` does every stage in the workdir (a re-run resumes each one; a finished
one is not redone):
  preferences.json    pairs of the SFT policy's own samples (with gold answers and corruptions)
                      labelled by the simulated labeler (`learned_loss.data.preference_pairs`)
  reward_model/       the SFT Transformer with a scalar head, trained with Bradley-Terry
  stages.json         the hash of the settings behind the two stages above and their seconds
  ppo/ rloo/ grpo/    on-policy RL against the reward model (`learned_loss.rlhf.training.rl_step`)
  dpo/                DPO on the same pairs (or IPO, or a learned preference loss: config.dpo)
  overoptimization.json   best-of-n (n = 1 .. best_of_n.samples; skipped when it is 0) and the
                      RL runs along training: gold and proxy gains against d = sqrt(KL), the
                      fits of Gao et al. 2022, and the length analysis.

The preference pairs and the reward model depend only on the SFT policy, the seed and their own
settings, so runs of several algorithms from one SFT policy can share them: with
`config.shared_dir` set, those two stages (and stages.json) live there instead. The first run
builds them, the others reuse them, and a run whose settings differ from the ones stages.json
records is refused.

Every RL and DPO run logs at each evaluation (`valid/`): proxy reward, gold exact match and
graded score of samples, KL to the SFT policy, completion length, and greedy exact match; the
on-policy runs also log the same figures of each step's own rollouts (no prefix).
Each stage directory is a training workdir (checkpoints, metrics.jsonl, TensorBoard,
provenance), so `experiments.evaluate --policy=W/ppo` works on it.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from learned_loss.core import cli, evaluation, files, hosts, loop, policy, provenance
from learned_loss.core import sampling, sharding, store, train
from learned_loss.core import metrics as metrics_lib
from learned_loss.core import model as model_lib
from learned_loss.data import paths, pipeline, preference_pairs, tasks
from learned_loss.objectives import artifact, learned
from learned_loss.rlhf import overoptimization, preferences, training
from learned_loss.rlhf import data as rlhf_data


# ---- set-up ---------------------------------------------------------------------------------


def algorithms(config) -> tuple[str, ...]:
    """config.algorithms as names; a command-line `--config.algorithms=ppo,dpo` arrives as one
    comma-separated string."""
    return tuple(name.strip() for item in config.algorithms for name in str(item).split(",")
                 if name.strip())


def _check_config(config) -> None:
    unknown = sorted(set(algorithms(config)) - set(training.ALGORITHMS + ("dpo",)))
    if unknown:
        raise cli.UserError(f"unknown algorithms {unknown} in config.algorithms; choose from "
                            f"{list(training.ALGORITHMS) + ['dpo']}")
    if not config.sft_from:
        raise cli.UserError("config.sft_from is required: pass --config.sft_from=<a fine-tuning "
                            "workdir> (experiments.finetune)")
    if config.dpo.loss_type not in ("sigmoid", "ipo", "learned"):
        raise cli.UserError(f"dpo.loss_type={config.dpo.loss_type!r}: use 'sigmoid', 'ipo' or "
                            f"'learned' (with dpo.learned_path)")
    if config.rl.get("reward", "reward_model") not in ("reward_model", "learned"):
        raise cli.UserError(f"rl.reward={config.rl.reward!r}: use 'reward_model' or 'learned' "
                            f"(with rl.learned_reward_path)")
    if config.dpo.loss_type == "learned" and config.dpo.label_smoothing:
        raise cli.UserError("dpo.label_smoothing is for loss_type='sigmoid' (cDPO); set it to 0 "
                            "with loss_type='learned'")


def preference_theta(config) -> dict | None:
    """Theta of the learned preference loss DPO trains with (dpo.loss_type='learned'): the
    artifact at dpo.learned_path, or, when it is empty, the initialisation at which the loss is
    DPO's; None for the other loss types. Raises artifact.ArtifactError for a bad path."""
    d = config.dpo
    if d.loss_type != "learned":
        return None
    if not d.learned_path:
        return learned.init_preference_loss(jax.random.key(0))
    try:
        return artifact.load(d.learned_path, expected_name="learned_preference_loss").theta
    except artifact.ArtifactError as e:
        raise artifact.ArtifactError(f"dpo.learned_path: {e}") from e


def reward_theta(config) -> dict | None:
    """Theta of the learned reward r_theta that PPO / RLOO / GRPO maximise
    (rl.reward='learned'): the `learned_reward` artifact at rl.learned_reward_path; None with
    rl.reward='reward_model' (the raw reward-model score). Raises artifact.ArtifactError for a
    missing, corrupt or mismatched artifact."""
    r = config.rl
    if r.get("reward", "reward_model") != "learned":
        return None
    if not r.get("learned_reward_path", ""):
        raise cli.UserError("rl.reward='learned' needs rl.learned_reward_path: point it at "
                            "WORKDIR/artifact of a finished experiments.meta_train_reward run "
                            "(or use rl.reward='reward_model')")
    path = r.learned_reward_path
    try:
        found = artifact.load(path, expected_name=learned.REWARD_ARTIFACT)
        return learned.check_reward_theta(found.theta)
    except artifact.ArtifactError as e:
        raise artifact.ArtifactError(f"rl.learned_reward_path: {e}") from e
    except ValueError as e:
        raise artifact.ArtifactError(f"rl.learned_reward_path: the artifact at {path!r} is not "
                                     f"a learned reward: {e}") from e


def task_families(config, sft_config) -> tuple[str, ...]:
    """The RL and preference families: config.tasks.families, or the SFT run's, resolved by
    `tasks.roles` against the SFT run's family split (held-out families are refused)."""
    split = sft_config.get("tasks") or config.tasks
    families = tuple(config.tasks.families) or tuple(split.get("families", ()))
    return tasks.roles.resolve(split, "pairs", families)


def role_record(config, families) -> dict[str, list[str]]:
    """The pipeline's families by role: the pairs and the reward model always (shared stages),
    RL prompts when an on-policy algorithm runs."""
    on_policy = [a for a in algorithms(config) if a != "dpo"]
    return tasks.roles.record({"pairs": families, "reward_model": families,
                               "rl_prompts": families if on_policy else ()})


def _with_head(model_config: ml_collections.ConfigDict, head: bool) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(model_config.to_dict())
    out.scalar_head = head
    return out


def _stage_config(config, sft: policy.Policy, section: str, model_cfg, batch: int):
    """The config a stage's workdir records: enough for `policy.load` to read it back."""
    stage = config.get(section)
    out = ml_collections.ConfigDict()
    out.seed = config.seed
    out.stage = section
    out.sft_from = config.sft_from
    out.model = model_cfg
    out.data = ml_collections.ConfigDict({"seq_len": sft.config.data.seq_len,
                                          "global_batch_size": batch,
                                          "data_dir": config.data.data_dir})
    out.optimizer = stage.optimizer
    out.train = stage.train
    out.mesh = config.mesh
    out.sharding = sft.config.sharding
    out.rlhf = config
    return out


def prompt_width(config) -> int:
    """P, the padded prompt length of rollouts: what preferences.seq_len leaves after the
    completion, so that every rollout has the layout the reward model was trained on."""
    width = config.preferences.seq_len - config.rl.max_new_tokens
    if width < 4:
        raise cli.UserError(f"rl.max_new_tokens={config.rl.max_new_tokens} leaves {width} "
                            f"prompt tokens of preferences.seq_len="
                            f"{config.preferences.seq_len}; raise it or lower max_new_tokens")
    return width


def _merge_params(fresh: Any, loaded: Any) -> Any:
    """`fresh` with every module that `loaded` has replaced by it (a new head stays fresh)."""
    return {**fresh, **{k: v for k, v in loaded.items() if k in fresh}}


class Stage:
    """A model, sharded state initialised from the SFT parameters, and its optimizer."""

    def __init__(self, config, sft: policy.Policy, mesh, section: str, head: bool, batch: int,
                 optimizer_steps: int):
        model_cfg = _with_head(sft.config.model, head)
        self.config = _stage_config(config, sft, section, model_cfg, batch)
        self.model_config = model_lib.ModelConfig.from_config(model_cfg)
        self.model = model_lib.build(self.model_config)
        self.optimizer = train.make_optimizer(self.config.optimizer, optimizer_steps)
        self.schedule = train.learning_rate_schedule(self.config.optimizer, optimizer_steps)
        rules, seq_len = sft.config.sharding.rules, sft.config.data.seq_len
        key = jax.random.key(config.seed)
        abstract, self.state_sh = train.state_layout(self.model, self.optimizer, seq_len, rules,
                                                     mesh)
        # Host copies: the train step donates its state, so no buffer may be shared with the
        # frozen reference parameters.
        loaded = jax.device_get(sft.params)
        if set(abstract.params) <= set(loaded):
            # Every module comes from the SFT policy: no fresh initialisation to compile; the
            # step and rng are init_state's (train.init_state splits the key alike).
            state = train.TrainState(
                params=None, opt_state=None,
                step=jax.device_put(jnp.zeros((), jnp.int32), self.state_sh.step),
                rng=jax.device_put(jax.random.key_data(jax.random.split(key)[1]),
                                   self.state_sh.rng))
            params = {k: loaded[k] for k in abstract.params}
        else:  # A new head: initialised fresh, the rest from the SFT policy.
            state, _ = train.create_sharded_state(self.model, self.optimizer, key, seq_len,
                                                  rules, mesh)
            params = _merge_params(jax.device_get(state.params), loaded)
        params = jax.device_put(params, self.state_sh.params)
        self.state = state._replace(params=params, opt_state=train.init_opt_state(
            self.optimizer, params, self.state_sh.opt_state))


def place_frozen(params: Any, sft_config, mesh) -> Any:
    """Frozen params (reference, reward model) placed by the partition rules."""
    specs = sharding.param_specs(params, sft_config.sharding.rules, mesh)
    return jax.device_put(jax.device_get(params), sharding.named(mesh, specs))


# ---- stage 1: preference pairs from the SFT policy's samples --------------------------------


def pair_args(config, families) -> dict[str, Any]:
    """`preference_pairs.pair_examples`'s arguments: the prompts of the pairs of `families`."""
    return dict(families=tuple(families), pairs_per_family=config.preferences.pairs_per_family,
                difficulty=tasks.difficulty_range(config.tasks.difficulty), seed=config.seed)


def build_preferences(config, sft: policy.Policy, families, workdir: str):
    p = config.preferences
    seq_len = p.seq_len
    args = pair_args(config, families)
    difficulty = args["difficulty"]
    prompts = preference_pairs.pair_examples(**args)
    examples = [e for split in sorted(prompts) for e in prompts[split]]
    samples = preferences.sample_completions(
        sft.model, sft.params, examples, samples_per_prompt=p.samples_per_prompt,
        temperature=p.temperature, top_k=p.top_k, max_new_tokens=config.rl.max_new_tokens,
        batch_size=p.batch_size, seq_len=seq_len, rng=jax.random.key(config.seed))
    info = hosts.first_on_process_zero(lambda: preference_pairs.build_preference_pairs(
        paths.data_dir(config.data.data_dir), families=families,
        pairs_per_family=p.pairs_per_family, difficulty=difficulty, tau=p.tau,
        length_bias=p.length_bias, length_scale=p.length_scale or float(seq_len),
        seed=config.seed, seq_len=seq_len, policy_samples=samples), "preference pairs built")
    summary = {split: preferences.summarize([preference_pairs.decode_record(r) for r in
                                             preference_pairs.load_split(info, split)])
               for split in info.num_pairs}
    if jax.process_index() == 0:
        files.write_json(os.path.join(workdir, "preferences.json"), {
            "dataset": info.provenance(), "policy": {"workdir": sft.workdir, "step": sft.step},
            "splits": summary})
    logging.info("preference pairs %s: labeler agrees with the gold order on %.3f of train",
                 info.num_pairs, summary["train"]["gold_order_agreement"])
    return info


def _pair_batches(pairs: pipeline.EncodedSource, batch: int, count: int) -> list[dict]:
    n = min(len(pairs), count * batch) // batch
    if n < 1:
        raise cli.UserError(f"the validation split has {len(pairs)} pairs, fewer than one batch "
                            f"of {batch}; raise preferences.pairs_per_family")
    return [pairs.batch(i * batch, batch) for i in range(n)]


def rlhf_data_iterator(pairs, batch: int, seed: int):
    """Shuffled, resumable batches of encoded pairs (this process's rows)."""
    return pipeline.make_example_iterator(pairs, global_batch_size=batch, seed=seed,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count())


# ---- stage 2: reward model ------------------------------------------------------------------


def train_reward_model(config, sft, info, mesh, workdir: str):
    """Trains (or resumes, or reuses) the reward model; returns (model, params)."""
    rc = config.reward_model
    seq_len = config.preferences.seq_len
    sharding.check_batch_divides(rc.global_batch_size, mesh)
    stage = Stage(config, sft, mesh, "reward_model", True, rc.global_batch_size,
                  rc.train.num_steps)
    train_pairs = rlhf_data.encoded_pairs(preference_pairs.load_split(info, "train"), seq_len)
    valid_pairs = rlhf_data.encoded_pairs(preference_pairs.load_split(info, "validation"),
                                         seq_len)
    eval_batches = _pair_batches(valid_pairs, rc.global_batch_size, rc.train.eval_batches)
    loss_fn = training.reward_loss_fn(stage.model, center_coef=rc.center_coef)
    train_step, eval_step = train.compile_steps(stage.model, stage.optimizer, None,
                                                stage.state_sh, mesh, loss_fn=loss_fn)
    last = loop.run(loop.Run(
        config=stage.config, workdir=workdir, mesh=mesh, model_config=stage.model_config,
        state=stage.state, train_step=train_step,
        schedule=stage.schedule,
        train_iter=rlhf_data_iterator(train_pairs, rc.global_batch_size, config.seed),
        seq_len=seq_len, global_batch_size=rc.global_batch_size,
        evaluate=lambda s: loop.mean_eval_metrics(eval_step, s, eval_batches, mesh),
        data_hash=info.config_hash, provenance_extra={"preferences": info.provenance()}))
    params, step = policy.restore_params(workdir, stage.config, stage.model)
    logging.info("reward model at step %d: %s", step, last)
    return stage.model, place_frozen(params, sft.config, mesh)


# ---- evaluation shared by every run ---------------------------------------------------------


# One jitted program per (models, shapes): shared by every evaluator and best-of-n.
_sample_and_score = jax.jit(training.sample_and_score, static_argnames=(
    "model", "reference_model", "reward_model_", "max_new_tokens", "temperature"))


class Evaluator:
    """Samples of fixed prompts scored by the reward model (proxy) and the gold scorers, with
    KL to the SFT policy and length; each call returns per-sample arrays and their means."""

    def __init__(self, config, families, *, reference, reward, width: int, prompts_per_family,
                 samples_per_prompt: int, seed_offset: int):
        self.reference_model, self.reference_params = reference
        self.reward_model, self.reward_params = reward
        stream = rlhf_data.PromptStream(
            families, difficulty=tasks.difficulty_range(config.tasks.difficulty),
            seed=config.seed + seed_offset, global_batch_size=1, width=width, kl_coef=0.0,
            split="validation")
        self.examples = [stream.example(r) for r in range(prompts_per_family * len(families))]
        self.samples = samples_per_prompt
        self.batch_size = config.eval.batch_size
        self.max_new_tokens = config.rl.max_new_tokens
        self.width = width
        self.seed = config.seed

    def samples_of(self, model, params) -> dict[str, np.ndarray]:
        rows = [e for e in self.examples for _ in range(self.samples)]
        out: dict[str, list] = {}
        for index, start in enumerate(range(0, len(rows), self.batch_size)):
            chunk = rows[start:start + self.batch_size]
            count = len(chunk)
            chunk = chunk + [chunk[0]] * (self.batch_size - count)
            prompts, lengths = sampling.pad_prompts([tasks.prompt_tokens(e) for e in chunk],
                                                   pad_to=self.width)
            result = jax.device_get(_sample_and_score(
                model, params, self.reference_model, self.reference_params, self.reward_model,
                self.reward_params, prompts, lengths,
                jax.random.fold_in(jax.random.key(self.seed + 17), index),
                max_new_tokens=self.max_new_tokens))
            exact, graded = rlhf_data.gold_scores(result["completions"][:count],
                                                  [e.answer for e in chunk[:count]])
            for key, value in (("proxy", result["proxy"][:count]),
                               ("kl", result["kl"][:count]),
                               ("length", result["length"][:count]),
                               ("finished", result["finished"][:count]),
                               ("gold_exact_match", exact), ("gold_graded", graded)):
                out.setdefault(key, []).append(np.asarray(value, np.float64))
        return {k: np.concatenate(v) for k, v in out.items()}

    def __call__(self, model, params) -> dict[str, float]:
        return self.summary(self.samples_of(model, params), model, params)

    def summary(self, per_sample: dict[str, np.ndarray], model, params) -> dict[str, float]:
        """The means of `samples_of`'s arrays, plus greedy exact match and graded score."""
        out = {f"valid/{k}": float(v.mean()) for k, v in per_sample.items()}
        greedy = evaluation.evaluate(model, params, self.examples, batch_size=self.batch_size,
                                     max_new_tokens=self.max_new_tokens)["overall"]
        out["valid/exact_match"] = greedy["exact_match"]
        out["valid/graded"] = greedy["graded"]
        return out


# ---- stage 3: on-policy RL and DPO ----------------------------------------------------------


def rl_settings(config, algorithm: str) -> training.RLSettings:
    r = config.rl
    return training.RLSettings(
        algorithm=algorithm, samples_per_prompt=r.samples_per_prompt,
        max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k,
        epochs=r.epochs, minibatches=r.minibatches, missing_eos_penalty=r.missing_eos_penalty,
        clip_range=r.clip_range, clip_range_value=r.clip_range_value, vf_coef=r.vf_coef,
        gamma=r.gamma, lam=r.lam, whiten_advantages=r.whiten_advantages,
        grpo_beta=r.grpo_beta)


def rl_step_program(stage: Stage, reference_model: model_lib.Model,
                    reward_model_: model_lib.Model, settings: training.RLSettings, mesh):
    """`training.rl_step` jitted with the stage's shardings (the state donated): one program
    per models, optimizer, settings, shardings and mesh (`train.program`), so that every RL run
    of the same shapes (the comparison's cells) reuses the first one's."""

    def build():
        batch_sh = NamedSharding(mesh, sharding.batch_spec(mesh))
        replicated = NamedSharding(mesh, P())
        return jax.jit(
            functools.partial(training.rl_step, model=stage.model,
                              reference_model=reference_model, reward_model_=reward_model_,
                              optimizer=stage.optimizer, settings=settings),
            in_shardings=(stage.state_sh, batch_sh, None),
            out_shardings=(stage.state_sh, replicated, replicated), donate_argnums=(0,))

    return train.program(("rl_step", stage.model, reference_model, reward_model_,
                          stage.optimizer, settings, train.tree_key(stage.state_sh), mesh),
                         build)


def train_rl(config, algorithm: str, sft, families, mesh, reference, reward, evaluator,
             workdir: str, learned_reward: dict | None = None) -> dict:
    """PPO / RLOO / GRPO against the reward model, or against r_theta on top of it when
    `learned_reward` (`reward_theta`) is given."""
    r = config.rl
    try:
        settings = rl_settings(config, algorithm)
    except ValueError as e:
        raise cli.UserError(f"rl: {e}") from None
    sharding.check_batch_divides(r.global_batch_size, mesh)
    updates = r.train.num_steps * r.epochs * r.minibatches
    stage = Stage(config, sft, mesh, "rl", algorithm == "ppo", r.global_batch_size, updates)
    stage.config.stage = algorithm
    width = prompt_width(config)
    source = rlhf_data.PromptStream(
        families, difficulty=tasks.difficulty_range(config.tasks.difficulty),
        seed=config.seed, global_batch_size=r.global_batch_size, width=width,
        kl_coef=r.kl_coef, kl_target=r.kl_target, kl_horizon=r.kl_horizon,
        process_index=jax.process_index(), process_count=jax.process_count())
    replicated = NamedSharding(mesh, P())
    step_fn = rl_step_program(stage, reference[0], reward[0], settings, mesh)
    theta = {"reference": reference[1], "reward": reward[1]}
    if learned_reward is not None:
        theta["learned_reward"] = jax.device_put(learned_reward, replicated)
    rows = r.global_batch_size * r.samples_per_prompt

    def train_step(state, batch, theta_):
        state, metrics, (completions, _) = step_fn(state, batch, theta_)
        index = np.repeat(hosts.host_value(batch["index"]), r.samples_per_prompt)
        exact, graded = rlhf_data.gold_scores(hosts.host_value(completions),
                                              [source.example(i).answer for i in index])
        metrics = dict(metrics, gold_exact_match=float(exact.mean()),
                       gold_graded=float(graded.mean()))
        if r.kl_target > 0:
            source.observe_kl(float(metrics["kl"]), rows)
        return state, metrics

    return loop.run(loop.Run(
        config=stage.config, workdir=workdir, mesh=mesh, model_config=stage.model_config,
        state=stage.state, train_step=train_step,
        schedule=lambda step: stage.schedule(step * r.epochs * r.minibatches),
        train_iter=source, seq_len=sft.config.data.seq_len,
        global_batch_size=rows, evaluate=lambda s: evaluator(stage.model, s.params),
        theta=theta, provenance_extra={"algorithm": algorithm, "families": list(families),
                                       "settings": settings.__dict__,
                                       "reward": "learned" if learned_reward is not None
                                       else "reward_model"}))


def train_dpo(config, sft, info, mesh, reference, evaluator, workdir: str,
              preference: dict | None = None) -> dict:
    """DPO (dpo.loss_type) on the train pairs; `preference` is the learned loss's theta
    (`preference_theta`) when the loss type is 'learned'."""
    d = config.dpo
    seq_len = config.preferences.seq_len
    sharding.check_batch_divides(d.global_batch_size, mesh)
    stage = Stage(config, sft, mesh, "dpo", False, d.global_batch_size, d.train.num_steps)
    train_pairs = rlhf_data.encoded_pairs(preference_pairs.load_split(info, "train"), seq_len)
    valid_pairs = rlhf_data.encoded_pairs(preference_pairs.load_split(info, "validation"),
                                         seq_len)
    eval_batches = _pair_batches(valid_pairs, d.global_batch_size, d.train.eval_batches)
    loss_fn = training.dpo_loss_fn(stage.model, beta=d.beta, loss_type=d.loss_type,
                               label_smoothing=d.label_smoothing, preference_theta=preference)
    train_step, eval_step = train.compile_steps(stage.model, stage.optimizer, None,
                                                stage.state_sh, mesh, loss_fn=loss_fn)

    def evaluate(s) -> dict:
        out = loop.mean_eval_metrics(eval_step, s, eval_batches, mesh, reference[1])
        out.update(evaluator(stage.model, s.params))
        return out

    return loop.run(loop.Run(
        config=stage.config, workdir=workdir, mesh=mesh, model_config=stage.model_config,
        state=stage.state, train_step=train_step,
        schedule=stage.schedule,
        train_iter=rlhf_data_iterator(train_pairs, d.global_batch_size, config.seed),
        seq_len=seq_len, global_batch_size=d.global_batch_size, evaluate=evaluate,
        theta=reference[1], data_hash=info.config_hash,
        provenance_extra={"preferences": info.provenance()}))


# ---- stages 1 and 2, shared: preference pairs and the reward model --------------------------

STAGES = "stages"  # SHARED/stages.json


def shared_settings_hash(config, sft: policy.Policy) -> str:
    """The hash of what the preference pairs and the reward model depend on: the SFT policy
    (its run and step), the seed, the task and data settings, the labeler, the reward model's
    training and the completion length the pairs are sampled with."""
    return provenance.config_hash({
        "sft": {"workdir": files.absolute(sft.workdir), "step": sft.step},
        "seed": config.seed, "tasks": config.tasks.to_dict(),
        "preferences": config.preferences.to_dict(),
        "reward_model": config.reward_model.to_dict(),
        "max_new_tokens": config.rl.max_new_tokens})


def shared_store(shared: str) -> store.Store:
    """Where stages.json lives: the hash of the shared stages' settings and their seconds."""
    return store.Store(shared, fix=f"give this run another shared_dir, or delete {shared} to "
                                   f"rebuild the preference pairs and the reward model")


def shared_stages(config, sft, families, mesh, shared: str):
    """Preference pairs and the reward model in `shared`, built there or reused; returns
    (pairs info, (reward model, params), the seconds the two stages took when built)."""
    settings = shared_settings_hash(config, sft)
    found = shared_store(shared).read(STAGES, settings)
    t0 = time.time()
    info = build_preferences(config, sft, families, shared)
    reward = train_reward_model(config, sft, info, mesh, os.path.join(shared, "reward_model"))
    # A SIGTERM during the reward model's training stops the pipeline here, not after RL on a
    # half-trained reward model; stages.json is written only once both stages are done.
    loop.raise_if_stopped("the RLHF algorithms")
    seconds = found["seconds"] if found else time.time() - t0
    if found is None and jax.process_index() == 0:
        shared_store(shared).write(STAGES, settings, {"seconds": seconds})
    return info, reward, seconds


# ---- stage 4: over-optimization -------------------------------------------------------------


def _fit(fitter, d, r) -> dict:
    try:
        return fitter(np.asarray(d), np.asarray(r))._asdict()
    except ValueError as e:
        return {"error": str(e)}


def best_of_n(config, families, sft, reference, reward, width: int) -> dict | None:
    """Gold and proxy of best-of-n (by proxy) against d = sqrt(log n - (n - 1) / n); None when
    best_of_n.samples is 0."""
    b = config.best_of_n
    if not b.samples:
        return None
    sampler = Evaluator(config, families, reference=reference, reward=reward, width=width,
                        prompts_per_family=b.prompts_per_family, samples_per_prompt=b.samples,
                        seed_offset=2)
    sampler.batch_size = b.batch_size
    per = sampler.samples_of(sft.model, reference[1])
    shape = (len(sampler.examples), b.samples)
    ns = [2 ** i for i in range(int(math.log2(b.samples)) + 1)]
    curve = overoptimization.best_of_n_curve(per["proxy"].reshape(shape),
                                             per["gold_graded"].reshape(shape), ns)
    gold_gain = curve["gold"] - curve["gold"][0]
    proxy_gain = curve["proxy"] - curve["proxy"][0]
    return {
        "prompts": shape[0], "samples_per_prompt": shape[1],
        **{k: np.asarray(v).tolist() for k, v in curve.items()},
        "gold_gain": gold_gain.tolist(), "proxy_gain": proxy_gain.tolist(),
        "fit_gold": _fit(overoptimization.fit_bon, curve["d"], gold_gain),
        "fit_proxy": _fit(overoptimization.fit_bon, curve["d"], proxy_gain),
    }


def rl_curve(workdir: str, initial: dict) -> dict:
    """The run's evaluations along training, with the SFT policy as d = 0, and the R_RL fits."""
    records = [m for m in metrics_lib.read_metrics(workdir) if "valid/kl" in m]
    steps = [0] + [m["step"] for m in records]
    kl = [0.0] + [m["valid/kl"] for m in records]
    d = np.sqrt(np.maximum(kl, 0.0))
    gold = np.array([initial["valid/gold_graded"]] + [m["valid/gold_graded"] for m in records])
    proxy = np.array([initial["valid/proxy"]] + [m["valid/proxy"] for m in records])
    length = [initial["valid/length"]] + [m["valid/length"] for m in records]
    exact = [initial["valid/exact_match"]] + [m["valid/exact_match"] for m in records]
    order = np.argsort(d, kind="stable")  # KL need not grow monotonically along training.
    peak = overoptimization.peak(d[order], gold[order])
    peak["step"] = steps[int(order[peak["index"]])]
    return {
        "step": steps, "kl": kl, "d": d.tolist(), "gold": gold.tolist(),
        "proxy": proxy.tolist(), "length": length, "greedy_exact_match": exact,
        "fit_gold": _fit(overoptimization.fit_rl, d, gold - gold[0]),
        "fit_proxy": _fit(overoptimization.fit_rl, d, proxy - proxy[0]),
        "peak": peak,
        "inverted_u": overoptimization.is_inverted_u(d[order], gold[order], min_drop=0.01),
    }


def length_analysis(before: dict, after: dict, buckets: int) -> dict:
    lengths = np.concatenate([before["length"], after["length"]])
    distinct = np.unique(lengths)
    if len(distinct) <= 2 * buckets:  # Few lengths (short answers): one bucket per length.
        edges = distinct[1:]
    else:
        edges = overoptimization.length_bucket_edges(lengths, buckets)
    out = overoptimization.length_bucket_gain(before["length"], before["proxy"],
                                              after["length"], after["proxy"], edges)
    return {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
            for k, v in out.items()} | {"edges": np.asarray(edges).tolist()}


# ---- the run --------------------------------------------------------------------------------


def run(config, workdir: str) -> dict:
    _check_config(config)
    # Read before the long stages, so that a bad dpo.learned_path fails at once.
    preference = preference_theta(config) if "dpo" in algorithms(config) else None
    learned_reward = reward_theta(config)
    start = time.time()
    sft = policy.load(config.sft_from)
    mesh = sharding.config_mesh(config.mesh)
    families = task_families(config, sft.config)
    width = prompt_width(config)
    shared = config.get("shared_dir", "") or workdir
    # Before anything is written.
    shared_store(shared).read(STAGES, shared_settings_hash(config, sft))
    files.makedirs(workdir)
    if jax.process_index() == 0:
        provenance.write(workdir, provenance.collect(config, mesh=mesh, extra={
            "sft": {"workdir": sft.workdir, "step": sft.step}, "families": list(families),
            tasks.roles.RECORD_KEY: role_record(config, families), "shared_dir": shared}))

    shared_start = time.time()
    info, reward, shared_seconds = shared_stages(config, sft, families, mesh, shared)
    own_start = time.time()
    reference = (sft.model, place_frozen(sft.params, sft.config, mesh))
    evaluator = Evaluator(config, families, reference=reference, reward=reward, width=width,
                          prompts_per_family=config.eval.prompts_per_family,
                          samples_per_prompt=config.eval.samples_per_prompt, seed_offset=1)
    finals = {}
    for algorithm in algorithms(config):
        stage_dir = os.path.join(workdir, algorithm)
        if algorithm == "dpo":
            finals[algorithm] = train_dpo(config, sft, info, mesh, reference, evaluator,
                                          stage_dir, preference)
        else:
            finals[algorithm] = train_rl(config, algorithm, sft, families, mesh, reference,
                                         reward, evaluator, stage_dir, learned_reward)
        loop.raise_if_stopped(f"the stage after {algorithm}")

    # Over-optimization: the SFT policy is every run's d = 0.
    before = evaluator.samples_of(sft.model, reference[1])
    initial = evaluator.summary(before, sft.model, reference[1])
    runs, lengths = {}, {}
    for algorithm in algorithms(config):
        stage_dir = os.path.join(workdir, algorithm)
        runs[algorithm] = rl_curve(stage_dir, initial)
        trained = policy.load(stage_dir)  # On this host alone: placed like the reference.
        after = evaluator.samples_of(trained.model,
                                     place_frozen(trained.params, trained.config, mesh))
        lengths[algorithm] = length_analysis(before, after, config.analysis.length_buckets)
    result = {
        "sft": {"workdir": sft.workdir, "step": sft.step, **initial},
        "best_of_n": best_of_n(config, families, sft, reference, reward, width),
        "rl": runs, "length": lengths,
        "labeler": {"tau": config.preferences.tau, "length_bias": config.preferences.length_bias},
        "final": finals, "wall_time_s": time.time() - start,
        # The shared stages' seconds when they were built (in this run or an earlier one), and
        # this run's own seconds without them: together, the compute of this run's algorithms.
        "seconds": {"shared": shared_seconds,
                    "own": (shared_start - start) + (time.time() - own_start)},
    }
    if jax.process_index() == 0:
        files.write_json(os.path.join(workdir, "overoptimization.json"), result)
    return result
