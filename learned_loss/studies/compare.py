"""The main job: objectives compared end to end from one pre-trained model.

`run(config, workdir, pretrain_run)` (configs/compare.py) does, resuming at every stage:
  0. every arm's families by role (learned_loss/studies/arms.py), refused before anything trains
     when an evaluation family has a meta role in any arm;
  1. pre-training, or the cached checkpoint CACHE/pretrain-KEY (KEY: `pretraining.cache_key`);
  2. meta-training of each learned objective the grid needs, in WORKDIR/meta/NAME (skipped
     when `config.artifacts.NAME` names an artifact), on its own families; the learned reward
     first gets an SFT policy of its own (WORKDIR/meta/learned_reward_sft);
  3. the token-level arms (learned_loss/studies/noisy_demonstrations.py), the seeds of one
     (arm, noise) as one program, each from the pre-trained parameters with the same step
     budget and its seed's own data; MLE's models are also kept as SFT policies in
     WORKDIR/sft/NOISE-sSEED;
  4. the RLHF arms, each a learned_loss/rlhf/pipeline.py run in WORKDIR/runs/KEY from the SFT
     policy of its noise kind and seed; the cells of one noise kind and seed share their
     preference pairs and reward model (WORKDIR/rlhf/NOISE-sSEED), and only the first RL run of
     the grid does best-of-n (the report's over-optimization plot); then `mle_gold_pairs`, MLE
     given the gold answers those pairs contain;
  5. WORKDIR/report.md and report.html (learned_loss/report/render.py);
  6. the wall time by stage, compiling and running apart (learned_loss/core/timing.py), in the
     log and appended to WORKDIR/timing.json, one entry per start of the job.

A seed resamples the data (learned_loss/studies/noisy_demonstrations.py): which inputs are
demonstrated and tested, which demonstrations are corrupted and how, the batches, and the RLHF pairs
and rollouts; the pre-trained model and the meta-trained artifacts have seeds of their own. A
finished cell records the hash of the settings behind it (`cell_settings`); a re-run with
other settings refuses it instead of reporting it as computed under them.

Every cell is scored the same way: greedy exact match, graded score and completion length on
the clean test split of `config.families` (inputs that no training split of any dataset
holds), per-prompt correctness, the sequence-level KL to the pre-trained model (the common
reference), and the answer NLL there; it also records the data it saw (`data_seen`). A cell is
WORKDIR/cells/OBJECTIVE-NOISE-sSEED.json, written atomically; a re-run skips the cells that
exist.

Multi-host (`--coordinator_address`, as in pre-training): every host runs the job. Pre-training
shards its batch over all hosts, meta-training its population (`pop` spans hosts), and the RLHF
stages their batches; the token-level cells, one small program over seeds each, are trained on
every host alike. Process 0 writes the workdir (`hosts.is_writer`), and decisions read
from it (is a stage finished?) are process 0's on every host (`hosts.agree`). The
workdir must be storage that every host reads (one machine's disk, or a bucket).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from learned_loss.core import cli, files, hosts, loop, policy, pretraining, provenance
from learned_loss.core import store, timing
from learned_loss.core import train
from learned_loss.core import checkpoint as checkpoint_lib
from learned_loss.core import metrics as metrics_lib
from learned_loss.data import tasks, training_rows
from learned_loss.meta import fit

from learned_loss.report import render as report
from learned_loss.rlhf import pipeline as rlhf_pipeline
from learned_loss.studies import token_arms, tuning
from learned_loss.studies import arms as arms_lib
from learned_loss.studies.arms import GOLD_PAIRS, META_TRAINED, RLHF, TOKEN

FAMILY_SET = "compare"
REWARD_SFT = "learned_reward_sft"
TIMING_FILE = "timing.json"  # The wall time by stage of each start (`run`).
# The gold-pairs cells' training rows (noisy demonstrations plus the gold answers of their
# seed's pairs, as many as there are) are padded to a multiple of this, so that the cells share
# a compiled program (token_arms.train_cells' row_bucket).
GOLD_ROW_BUCKET = 256


def cell_key(objective: str, noise: str, seed: int, meta_seed: int = 0) -> str:
    """OBJECTIVE-NOISE-sSEED, and -mMETA for a learned arm's artifact of meta seed META > 0."""
    return f"{objective}-{noise}-s{seed}" + (f"-m{meta_seed}" if meta_seed else "")


def _copy(config) -> ml_collections.ConfigDict:
    """An unlocked, independent copy of a (possibly locked) config section."""
    return ml_collections.ConfigDict(config.to_dict())


def check(config) -> None:
    """Refuses a config the run cannot do, before anything is trained (cli.UserError)."""
    unknown = [o for o in config.objectives if o not in arms_lib.ARMS]
    if unknown:
        raise cli.UserError(f"unknown objectives {unknown} in config.objectives; choose among "
                            f"{list(arms_lib.ARMS)}")
    if len(set(config.objectives)) != len(config.objectives):
        raise cli.UserError(f"config.objectives names an objective twice: "
                            f"{list(config.objectives)}")
    if "mle" not in config.objectives or "mle_clean" not in config.objectives:
        raise cli.UserError("config.objectives must hold 'mle' (the baseline) and 'mle_clean' "
                            "(MLE on the same inputs without corruption: the headroom every "
                            "arm is measured against); add them")
    if GOLD_PAIRS in config.objectives and not any(o in RLHF for o in config.objectives):
        raise cli.UserError(f"{GOLD_PAIRS} trains on the gold answers of the RLHF arms' "
                            f"preference pairs: add an RLHF arm (e.g. 'dpo') to "
                            f"config.objectives, or drop {GOLD_PAIRS}")
    missing = [n for n in config.noise_order if n not in config.noises]
    if missing:
        raise cli.UserError(f"noise_order names {missing}, which are not in config.noises "
                            f"{sorted(config.noises)}")
    if config.pretrain.model.to_dict() != config.model.to_dict():
        raise cli.UserError("config.pretrain.model differs from config.model; the objectives "
                            "fine-tune the pre-trained model, so override both alike")
    if config.pretrain.data.seq_len != config.data.seq_len:
        raise cli.UserError(f"config.pretrain.data.seq_len={config.pretrain.data.seq_len} "
                            f"differs from config.data.seq_len={config.data.seq_len}")
    if min(config.seeds, config.steps, config.eval.curve_points, config.meta_seeds) < 1:
        raise cli.UserError("seeds, meta_seeds, steps and eval.curve_points must each be at "
                            "least 1")
    for name in META_TRAINED:
        path = config.artifacts.get(name, "")
        if name in config.objectives and path and not files.isdir(path):
            raise cli.UserError(f"artifacts.{name}={path!r} is not a directory; point it at "
                                f"WORKDIR/artifact of a finished meta-training run, or leave "
                                f"it empty to meta-train in this run")
        if name in config.objectives and path and config.meta_seeds > 1:
            raise cli.UserError(f"artifacts.{name} gives one artifact, but meta_seeds="
                                f"{config.meta_seeds} asks for one per meta seed; leave "
                                f"artifacts.{name} empty to meta-train them, or set meta_seeds=1")


# ---- 1. pre-training ------------------------------------------------------------------------


def pretrained(config, pretrain_run: Callable[[Any, str], Any]) -> policy.Policy:
    """The pre-trained policy of `config.pretrain`, from the cache (pretraining.cached)."""
    return pretraining.cached(config.pretrain, pretrain_run, config.cache_dir)


# ---- 2. meta-training -----------------------------------------------------------------------


def meta_train(config, workdir: str, name: str, meta_seed: int = 0, pretrained_dir: str = "",
               sft_from: str = "") -> str:
    """Meta-trains objective `name` with meta seed `meta_seed` (its config's seed plus it) in
    WORKDIR/meta/NAME[-mSEED] unless its artifact exists; returns the artifact's path, and
    keeps the seconds it took beside it (arms.TIMING). The token losses' inner runs start
    from `pretrained_dir`; the learned reward's RL runs from the SFT policy in `sft_from`, on
    its own families."""
    from learned_loss.meta import preference_run, reward_run
    from learned_loss.meta import run as token_run

    path = arms_lib.artifact_path(config, workdir, name, meta_seed)
    meta_dir = arms_lib.meta_dir(workdir, name, meta_seed)
    cfg = _copy(config.meta[name])
    cfg.seed += meta_seed

    def build():
        logging.info("meta-training %s in %s", name, meta_dir)
        if name in arms_lib.META_TOKEN:
            cfg.inner.init_from = pretrained_dir
            token_run.run(cfg, meta_dir)
        elif name == "learned_preference":
            preference_run.run(cfg, meta_dir)
        else:
            cfg.rlhf.sft_from = sft_from
            reward_run.run(cfg, meta_dir)

    store.ensure(f"meta-training {name}", lambda: files.isdir(path), build, meta_dir,
                 timing=os.path.join(meta_dir, arms_lib.TIMING))
    return path


def reward_sft(config, workdir: str, pre: policy.Policy) -> str:
    """The learned reward's SFT policy: the pre-trained model after `config.steps` of MLE on
    clean demonstrations of the reward's own families (never the evaluation families), kept
    in WORKDIR/meta/learned_reward_sft."""
    path = os.path.join(workdir, "meta", REWARD_SFT)
    if files.isdir(path):
        return path
    families = arms_lib.reward_families(config)
    view = noisy_view(config)
    view.family_sets = {"reward": families}
    view.noises = {"clean": {"kinds": ("other_answer",), "rho": 0.0}}
    cell = token_arms.Cell("reward", "clean", "mle", config.model.variant, 0)
    data = token_arms.build_data(view, "reward", "clean", 0)
    _, inners, facts = token_arms.train_cells(view, [cell], [data], init_params=pre.params)
    write_sft(view, path, inners[0], 0, families)
    return path


# ---- 3. token-level objectives --------------------------------------------------------------


def noisy_view(config, artifact: str = "") -> ml_collections.ConfigDict:
    """The config as learned_loss/studies/noisy_demonstrations.py reads it (one family set,
    FAMILY_SET)."""
    view = _copy(config)
    view.family_sets = {FAMILY_SET: tuple(config.families)}
    view.learned.artifacts = {"default": artifact}
    view.learned.closed_forms = {"default": ""}
    view.transfer = ml_collections.ConfigDict({"model": config.model.to_dict()})
    return view


def score(config, model, params, reference_params, data: token_arms.Data, seed: int) -> dict:
    """The cell's metrics (token_arms.score, with the KL to the pre-trained model), its
    per-family exact match and its per-prompt correctness."""
    scored = token_arms.score(config, model, params, data, reference_params=reference_params,
                              rng=jax.random.key(seed))
    families = scored.pop("families")
    per_prompt = scored.pop("per_prompt")
    return {"metrics": scored, "families": families, "per_prompt": per_prompt}


def write_sft(config, workdir: str, inner: Mapping[str, Any], seed: int, families) -> None:
    """Keeps a token-level cell's model as a policy workdir (`policy.load` reads it; the RLHF
    pipeline's sft_from): a provenance.json with the run's config (the pre-training config's
    sections, the cell's optimizer, steps, families and seed) and one checkpoint of the cell's
    final training state: `inner` ({'params', 'opt_state', 'step'}, from token_arms.train_cells)
    and the rng a sharded run of seed `seed` holds after as many steps. In a multi-host job
    process 0 writes it alone (every host trained the same cell)."""
    if not hosts.is_writer():
        return
    step = int(inner["step"])
    sft = _copy(config.pretrain)
    sft.tasks.families = tuple(families)
    sft.train.num_steps = step
    sft.seed = seed
    sft.optimizer = config.optimizer.to_dict()
    run_key = fit.seed_keys([seed])[0, 1]  # train.init_state's state rng.
    rng = _rng_after(jax.random.key_data(run_key), step)
    state = train.TrainState(params=inner["params"], opt_state=inner["opt_state"],
                             step=jnp.asarray(step, jnp.int32), rng=rng)
    tmp = workdir + ".tmp"
    files.rmtree(tmp)
    provenance.write(tmp, provenance.collect(sft, extra={
        "kept_by": "compare_objectives", "objective": "mle",
        tasks.roles.RECORD_KEY: tasks.roles.record({"finetune": families})}))
    ckpt = checkpoint_lib.Checkpointer(tmp, async_save=False, this_process_only=True)
    ckpt.save(step, state, {"model": config.model.to_dict()})
    ckpt.close()
    files.replace_dir(tmp, workdir)


@functools.partial(jax.jit, static_argnums=1)
def _rng_after(rng: jax.Array, steps: int) -> jax.Array:
    """A state's rng ([2] uint32 key data) after `steps` steps (one program per step count)."""
    return jax.lax.fori_loop(0, steps, lambda _, r: train.next_rng(r), rng)


def sft_dir(workdir: str, noise: str, seed: int) -> str:
    return os.path.join(workdir, "sft", f"{noise}-s{seed}")


def rlhf_shared_dir(workdir: str, noise: str, seed: int) -> str:
    """The preference pairs and reward model of the RLHF cells from one SFT policy."""
    return os.path.join(workdir, "rlhf", f"{noise}-s{seed}")


# ---- 4. RLHF objectives ---------------------------------------------------------------------


def rlhf_config(config, objective: str, noise: str, seed: int, workdir: str,
                artifact: str = "", best_of_n: bool = False) -> ml_collections.ConfigDict:
    """The pipeline config of one RLHF cell (`artifact`: a learned arm's objective); best-of-n
    only when `best_of_n`. The seed is the cell's: its pairs' prompts, the labels and the
    rollouts are its own."""
    r = _copy(config.rlhf)
    r.sft_from = sft_dir(workdir, noise, seed)
    r.shared_dir = rlhf_shared_dir(workdir, noise, seed)
    if not best_of_n:
        r.best_of_n.samples = 0
    r.seed = config.tasks.seed + seed
    r.algorithms = (RLHF[objective],)
    r.tasks.families = tuple(config.families)
    r.data = ml_collections.ConfigDict({"data_dir": config.data.data_dir})
    if objective == "learned_preference":
        r.dpo.loss_type = "learned"
        r.dpo.label_smoothing = 0.0
        r.dpo.learned_path = artifact
    if objective == "learned_reward":
        r.rl.reward = "learned"
        r.rl.learned_reward_path = artifact
    return r


def rlhf_tokens(r, algorithm: str) -> int:
    """Tokens of the RLHF stages after SFT: reward-model pairs and the policy's training
    (rollouts of K completions of P + new tokens, or DPO's pairs)."""
    pair_tokens = 2 * r.preferences.seq_len
    tokens = r.reward_model.train.num_steps * r.reward_model.global_batch_size * pair_tokens
    if algorithm == "dpo":
        return tokens + r.dpo.train.num_steps * r.dpo.global_batch_size * pair_tokens
    return tokens + (r.rl.train.num_steps * r.rl.global_batch_size * r.rl.samples_per_prompt
                     * r.preferences.seq_len)


def rlhf_curve(stage_dir: str, offset: int) -> list[dict]:
    """The RLHF run's greedy exact match along training (its evaluator's prompts)."""
    return [{"step": offset + int(m["step"]), "exact_match": float(m["valid/exact_match"])}
            for m in metrics_lib.read_metrics(stage_dir) if "valid/exact_match" in m]


# ---- the run --------------------------------------------------------------------------------


# What a cell's numbers do not depend on: which cells there are (the other objectives, seeds
# and noise kinds, the other objectives' meta-training) and where the cache lives.
GRID_KEYS = ("variant", "objectives", "seeds", "meta_seeds", "noise_order", "noises", "meta",
             "artifacts", "rlhf", "cache_dir")


def cell_settings(config, objective: str, noise: str, meta_seed: int = 0) -> str:
    """The hash of the settings behind one cell: the config without GRID_KEYS and the sections
    its token method does not read (`token_arms.unread`; the RLHF arms start from the MLE
    cell), plus its own noise kind, its own meta-training, meta seed and artifact (a learned
    objective) and the RLHF settings (an RLHF objective and the gold-pairs control, which
    trains on their pairs)."""
    drop = GRID_KEYS + token_arms.unread(TOKEN.get(objective, "mle"))
    values = {k: v for k, v in config.to_dict().items() if k not in drop}
    values["noise"] = config.noises[noise].to_dict()
    if objective in META_TRAINED:
        values["meta"] = config.meta[objective].to_dict()
        values["artifact"] = config.artifacts.get(objective, "")
        if meta_seed:
            values["meta_seed"] = meta_seed
    if objective in RLHF or objective == GOLD_PAIRS:
        values["rlhf"] = config.rlhf.to_dict()
    return provenance.config_hash(values)


class Grid:
    """Cells to do, done, and the progress line with an ETA over the whole grid.

    `settings` maps each cell's key to the hash of its settings (`cell_settings`); a finished
    cell computed under other settings is refused, not reported as if it had these."""

    def __init__(self, workdir: str, settings: Mapping[str, str], clock=time.monotonic):
        self.workdir = workdir
        self.store = store.Store(os.path.join(workdir, "cells"))
        self.settings = dict(settings)
        self.total = len(self.settings)
        self.done = {k for k in sorted(self.settings) if self.read(k) is not None}
        self._todo_at_start = self.total - len(self.done)
        self._finished = 0
        self._clock = clock
        self._start = clock()

    def restart_clock(self) -> None:
        self._start = self._clock()

    def path(self, key: str) -> str:
        return self.store.path(key)

    def read(self, key: str) -> dict | None:
        """A finished cell, checked against its settings (None while it is not done)."""
        return self.store.read(key, self.settings[key])

    def record(self, key: str, cell: Mapping[str, Any]) -> None:
        self.store.write(key, self.settings[key], cell)
        self.done.add(key)
        self._finished += 1

    def progress(self) -> str:
        """`[#####.....] 6/12 cells | ETA 3.2 min` (ETA from this run's cells so far)."""
        width, n = 20, len(self.done)
        filled = round(width * n / max(self.total, 1))
        line = f"[{'#' * filled}{'.' * (width - filled)}] {n}/{self.total} cells"
        left = self._todo_at_start - self._finished
        if self._finished:
            eta = (self._clock() - self._start) / self._finished * left
            line += f" | ETA {eta / 60:.1f} min"
        return line


def check_setting(grid: Grid, key: str, chosen: Mapping[str, Any]) -> None:
    """Refuses a finished token cell whose hand-made setting (facts['setting'], the one its
    arm's tuning chose when it ran; {} for an arm without one) is not `chosen`, the one the
    tuning chooses now: its settings hash covers the config, not the tuning's choice, which a
    re-tuning (a removed tuning folder, another pre-trained start) can change."""
    cell = grid.read(key)
    recorded = (cell or {}).get("facts", {}).get("setting", {})
    if cell is not None and recorded != json.loads(json.dumps(dict(chosen))):
        raise cli.UserError(f"{grid.path(key)} was trained with the setting {recorded}, but the "
                            f"tuning now chooses {dict(chosen)}; remove the cells of that arm "
                            f"(or use a new workdir) to recompute them")


def cell_record(objective, noise, seed, scored, *, seconds, data_seen, curve, facts,
                meta_seed: int = 0) -> dict:
    return {"objective": objective, "noise": noise, "seed": seed, "meta_seed": meta_seed,
            **scored, "compute": {"seconds": seconds, "tokens": int(data_seen["tokens"])},
            "data_seen": dict(data_seen), "curve": curve, "facts": facts}


def verbatim_in_pretraining(config, data: Mapping[Any, token_arms.Data]) -> dict[str, int]:
    """How many distinct test prompts of the evaluation families occur verbatim in the
    pre-training text (the corpus's train split and any task mix): the partition keeps test
    inputs out of the mix, but a corpus of real text could still hold one."""
    prompts = sorted({e.prompt for d in data.values() for e in d.test_examples})
    return {"test_prompts": len(prompts),
            "in_pretraining_text": pretraining.count_verbatim(config.pretrain, prompts)}


def run(config, workdir: str, pretrain_run: Callable[[Any, str], Any], log=logging.info
        ) -> dict[str, str]:
    """The whole job (module docstring). Returns the report's paths. The wall time by stage,
    compiling and running apart (core/timing.py), is logged at the end and appended to
    WORKDIR/timing.json (`TIMING_FILE`), also when SIGTERM stops the job between stages."""
    check(config)
    timing.reset()
    try:
        paths = _run(config, workdir, pretrain_run, log)
    except cli.Preempted:
        _keep_timing(workdir, "preempted", log)
        raise
    _keep_timing(workdir, "finished", log)
    return paths


def _run(config, workdir: str, pretrain_run: Callable[[Any, str], Any], log) -> dict[str, str]:
    start = time.time()
    objectives = list(config.objectives)
    token = [o for o in objectives if o in TOKEN]
    token.sort(key=lambda o: o != "mle")  # The baseline (and the RLHF arms' SFT) first.
    rlhf_objs = [o for o in objectives if o in RLHF]
    seeds = range(config.seeds)
    roles = arms_lib.roles(config, workdir)  # Refuses a meta role on an evaluation family.
    grid = Grid(workdir, {cell_key(o, n, s, m): cell_settings(config, o, n, m)
                          for n in config.noise_order for o in objectives for s in seeds
                          for m in arms_lib.meta_seeds(config, o)})
    log(f"compare: {grid.total} cells ({len(grid.done)} done) in {workdir}")

    with timing.stage("pre-training"):
        pre = pretrained(config, pretrain_run)
    with timing.stage("data"):
        view = noisy_view(config)
        data = {(n, s): token_arms.build_data(view, FAMILY_SET, n, s)
                for n in config.noise_order for s in seeds}
        provenance.write(workdir, provenance.collect(config, extra={
            "pretrain": {"workdir": pre.workdir, "step": pre.step,
                         "cache_key": pretraining.cache_key(config.pretrain)},
            "data_hashes": {f"{n}-s{s}": d.info.config_hash for (n, s), d in data.items()},
            "cells": grid.total,
            "evaluation_families": sorted(arms_lib.evaluation_families(config)),
            tasks.roles.RECORD_KEY: roles,
            "verbatim_in_pretraining": verbatim_in_pretraining(config, data)}))

    # artifacts[(name, meta seed)]: each learned arm's objective, one per meta seed.
    artifacts = {}
    for name in arms_lib.META_TOKEN + ("learned_preference",):
        if name in objectives:
            with timing.stage(f"meta-training {name}"):
                artifacts.update({(name, m): meta_train(config, workdir, name, m,
                                                        pretrained_dir=pre.workdir)
                                  for m in arms_lib.meta_seeds(config, name)})
    if "learned_reward" in objectives:
        with timing.stage("meta-training learned_reward"):
            sft_from = reward_sft(config, workdir, pre)
            artifacts.update({("learned_reward", m): meta_train(
                config, workdir, "learned_reward", m, sft_from=sft_from)
                for m in arms_lib.meta_seeds(config, "learned_reward")})

    # The hand-made arms' settings, tuned on the tuning families from the same start.
    with timing.stage("tuning"):
        tables = tuning.run(view, workdir,
                            [(TOKEN[o], n) for n in config.noise_order for o in token],
                            init_params=pre.params, start=pretraining.cache_key(config.pretrain),
                            log=log)

    # Token-level objectives: one program per (objective, noise, meta seed).
    grid.restart_clock()  # The ETA counts cells only, not pre-, meta-training and tuning.
    step0: dict[tuple[str, int], float] = {}
    for noise in config.noise_order:
        for objective in token:
            for m in arms_lib.meta_seeds(config, objective):
                todo = [s for s in seeds if cell_key(objective, noise, s, m) not in grid.done]
                if objective == "mle" and rlhf_objs:
                    todo = sorted(set(todo) | {s for s in seeds if not files.isdir(
                        sft_dir(workdir, noise, s))})
                chosen = tuning.chosen(tables, TOKEN[objective], noise)
                for s in seeds:
                    if s not in todo:
                        check_setting(grid, cell_key(objective, noise, s, m), chosen)
                if not todo:
                    timing.skipped(f"token {objective}", "groups done before")
                    continue
                loop.raise_if_stopped(f"{objective} on {noise}")
                unscored = [s for s in todo if (noise, s) not in step0]
                if unscored:
                    with timing.stage("pre-trained model scored"):
                        for s in unscored:
                            step0[(noise, s)] = token_arms.exact_match(
                                config, pre.model, pre.params, data[(noise, s)])
                with timing.stage(f"token {objective}"):
                    _token_group(config, workdir, grid, objective, noise, todo,
                                 [data[(noise, s)] for s in todo], pre,
                                 artifacts.get((objective, m), ""), m,
                                 [step0[(noise, s)] for s in todo], bool(rlhf_objs), chosen)
                log(f"{grid.progress()} | {objective} on {noise}")

    # The RLHF arms start from the MLE cells' policies, which process 0 wrote.
    hosts.barrier("token-level cells written")
    for noise in config.noise_order:
        for objective in rlhf_objs:
            for seed in seeds:
                for m in arms_lib.meta_seeds(config, objective):
                    key = cell_key(objective, noise, seed, m)
                    if key in grid.done:
                        timing.skipped(f"rlhf {objective}", "cells done before")
                        continue
                    loop.raise_if_stopped(key)
                    with timing.stage(f"rlhf {objective}"):
                        _rlhf_cell(config, workdir, grid, objective, noise, seed,
                                   data[(noise, seed)], pre, artifacts.get((objective, m), ""),
                                   m)
                    log(f"{grid.progress()} | {key}")
        if GOLD_PAIRS in objectives:
            for seed in seeds:
                if cell_key(GOLD_PAIRS, noise, seed) in grid.done:
                    timing.skipped(f"token {GOLD_PAIRS}", "cells done before")
                    continue
                loop.raise_if_stopped(cell_key(GOLD_PAIRS, noise, seed))
                with timing.stage(f"token {GOLD_PAIRS}"):
                    _gold_pairs_cell(config, workdir, grid, noise, seed, data[(noise, seed)],
                                     pre)
                log(f"{grid.progress()} | {cell_key(GOLD_PAIRS, noise, seed)}")
    log(f"compare: all {grid.total} cells done in {time.time() - start:.0f} s")
    with timing.stage("report"):
        return report.write(workdir)


def _keep_timing(workdir: str, status: str, log) -> None:
    """Logs this process's breakdown (timing.table) and, on process 0, appends it to
    WORKDIR/timing.json: {"runs": [{"status", "timestamp", "processes", "breakdown"}, ...]},
    one entry per start of the job (a resumed one adds its own; its reused and skipped stages
    say so in their notes and `skipped` counts)."""
    account = timing.breakdown()
    log(f"compare: wall time by stage, compiling and running ({status}):\n"
        f"{timing.table(account)}")
    if not hosts.is_writer():
        return
    path = os.path.join(workdir, TIMING_FILE)
    kept = files.read_json(path) if files.exists(path) else {"runs": []}
    kept["runs"].append({"status": status, "timestamp": time.strftime(
        "%Y-%m-%dT%H:%M:%S%z"), "processes": jax.process_count(), "breakdown": account})
    files.write_json(path, kept)


def _meta_seen(config, workdir: str, objective: str, meta_seed: int) -> dict:
    if objective not in META_TRAINED:
        return {}
    return {"meta_training": arms_lib.meta_compute(config, workdir, objective, meta_seed)}


def _token_group(config, workdir, grid, objective, noise, todo, data, pre, artifact,
                 meta_seed, em0, keep_sft, setting):
    method = TOKEN[objective]
    cfg = tuning.apply(noisy_view(config, artifact), method, setting)
    cells = [token_arms.Cell(FAMILY_SET, noise, method, config.model.variant, s) for s in todo]
    curves = {s: [{"step": 0, "exact_match": em}] for s, em in zip(todo, em0)}

    def on_segment(step, model, inners):
        for s, d, inner in zip(todo, data, inners):
            curves[s].append({"step": step, "exact_match": token_arms.exact_match(
                config, model, inner["params"], d)})

    t0 = time.time()
    model, inners, facts = token_arms.train_cells(
        cfg, cells, data, init_params=pre.params, segments=config.eval.curve_points,
        on_segment=on_segment)
    scored = {s: score(config, model, inner["params"], pre.params, d, s)
              for s, d, inner in zip(todo, data, inners)}
    seconds = (time.time() - t0) / len(todo)
    for i, (s, d, inner) in enumerate(zip(todo, data, inners)):
        if keep_sft and objective == "mle":
            write_sft(cfg, sft_dir(workdir, noise, s), inner, s, config.families)
        key = cell_key(objective, noise, s, meta_seed)
        if key in grid.done:
            continue
        curve = curves[s] + [{"step": facts["steps"],
                              "exact_match": scored[s]["metrics"]["exact_match"]}]
        cell_facts = dict(facts)
        for name in token_arms.PER_CELL_FACTS:
            if name in facts:
                cell_facts[name] = facts[name][i]
        cell_facts.update(data_hash=d.info.config_hash, method=method, artifact=artifact,
                          setting=dict(setting))
        seen = dict(token_arms.data_seen(cfg, method, d),
                    **_meta_seen(config, workdir, objective, meta_seed))
        grid.record(key, cell_record(objective, noise, s, scored[s], seconds=seconds,
                                     data_seen=seen, curve=curve, facts=cell_facts,
                                     meta_seed=meta_seed))


def _sft_cell(grid, noise: str, seed: int) -> dict:
    return grid.read(cell_key("mle", noise, seed))


def _rlhf_cell(config, workdir, grid, objective, noise, seed, data, pre, artifact, meta_seed):
    key = cell_key(objective, noise, seed, meta_seed)
    run_dir = os.path.join(workdir, "runs", key)
    algorithm = RLHF[objective]
    over = os.path.join(workdir, "overoptimization.json")
    # The report's plot; every host takes process 0's view (it writes `over`).
    first_rl = algorithm != "dpo" and hosts.agree(not files.exists(over))
    r = rlhf_config(config, objective, noise, seed, workdir, artifact, best_of_n=first_rl)
    result = rlhf_pipeline.run(r, run_dir)
    t0 = time.time()
    stage = os.path.join(run_dir, algorithm)
    final = policy.load(stage)
    # The policy without PPO's value head: the pre-trained model's modules only.
    params = {k: v for k, v in final.params.items() if k in pre.params}
    scored = score(config, pre.model, params, pre.params, data, seed)
    if first_rl:
        files.write_json(over, result)
    sft_cell = _sft_cell(grid, noise, seed)
    curve = sft_cell["curve"] + rlhf_curve(stage, config.steps)
    seen = dict(arms_lib.rlhf_data_seen(sft_cell["data_seen"], r.shared_dir,
                                        rlhf_tokens(r, algorithm)),
                **_meta_seen(config, workdir, objective, meta_seed))
    # Compute: the SFT, the shared pairs and reward model (their cost when they were built,
    # whichever cell built them), and this cell's own algorithm, analysis and scoring.
    rlhf_seconds = result["seconds"]["shared"] + result["seconds"]["own"] + time.time() - t0
    facts = {"algorithm": algorithm, "sft_from": r.sft_from, "run_dir": run_dir,
             "shared_dir": r.shared_dir, "rlhf_seconds": rlhf_seconds,
             "shared_seconds": result["seconds"]["shared"], "best_of_n": first_rl,
             "data_hash": data.info.config_hash, "artifact": artifact}
    grid.record(key, cell_record(objective, noise, seed, scored,
                                 seconds=sft_cell["compute"]["seconds"] + rlhf_seconds,
                                 data_seen=seen, curve=curve, facts=facts, meta_seed=meta_seed))


def _gold_pairs_cell(config, workdir, grid, noise, seed, data, pre):
    """MLE from the pre-trained model on the noisy demonstrations plus the gold answers inside
    the train pairs of this noise kind and seed (the RLHF arms' shared stage), same budget."""
    shared = rlhf_shared_dir(workdir, noise, seed)
    if not files.exists(os.path.join(shared, "preferences.json")):
        raise cli.UserError(f"{GOLD_PAIRS} needs the preference pairs in {shared}, which the "
                            f"RLHF arms build; re-run with an RLHF arm in config.objectives")
    gold = arms_lib.gold_pair_rows(shared, config.data.seq_len)
    extended = dataclasses.replace(data, train=training_rows.concatenate([data.train, gold]))
    cfg = noisy_view(config)
    cell = token_arms.Cell(FAMILY_SET, noise, "mle", config.model.variant, seed)
    t0 = time.time()
    model, inners, facts = token_arms.train_cells(cfg, [cell], [extended], init_params=pre.params,
                                                  row_bucket=GOLD_ROW_BUCKET)
    scored = score(config, model, inners[0]["params"], pre.params, data, seed)
    seen = dict(token_arms.data_seen(cfg, "mle", data), gold_answers_in_pairs=len(gold))
    curve = [_sft_cell(grid, noise, seed)["curve"][0],  # The pre-trained model, same prompts.
             {"step": facts["steps"], "exact_match": scored["metrics"]["exact_match"]}]
    facts = dict(facts, corrupted_rows=facts["corrupted_rows"][0], method="mle",
                 data_hash=data.info.config_hash, shared_dir=shared, gold_rows=len(gold))
    grid.record(cell_key(GOLD_PAIRS, noise, seed),
                cell_record(GOLD_PAIRS, noise, seed, scored, seconds=time.time() - t0,
                            data_seen=seen, curve=curve, facts=facts))
