"""The main job: objectives compared end to end from one pre-trained model.

`run(config, workdir, pretrain_run)` (configs/compare.py) does, resuming at every stage:
  1. pre-training, or the cached checkpoint CACHE/pretrain-HASH (HASH: of `config.pretrain`);
  2. meta-training of each learned objective the grid needs, in WORKDIR/meta/NAME (skipped
     when `config.artifacts.NAME` names an artifact);
  3. the token-level objectives (learned_loss/meta/comparison.py), the seeds of one
     (objective, noise) as one vmapped program, each from the pre-trained parameters with the
     same step budget; MLE's models are also kept as SFT policies in WORKDIR/sft/NOISE-sSEED;
  4. the RLHF objectives, each a learned_loss/rlhf_pipeline.py run in WORKDIR/runs/KEY from
     the SFT policy of its noise kind and seed; the cells of one noise kind and seed share
     their preference pairs and reward model (WORKDIR/rlhf/NOISE-sSEED), and only the first
     RL run of the grid does best-of-n (the report's over-optimization plot);
  5. WORKDIR/report.md and report.html (learned_loss/report.py).

A finished cell records the hash of the settings behind it (`cell_settings`); a re-run with
other settings refuses it instead of reporting it as computed under them.

Every cell is scored the same way: greedy exact match, graded score and completion length on
the clean test split of `config.families` (inputs no run saw; families no learned objective
was meta-trained on), the sequence-level KL to the pre-trained model (the common reference),
and the answer NLL there. A cell is WORKDIR/cells/OBJECTIVE-NOISE-sSEED.json, written
atomically; a re-run skips the cells that exist.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from learned_loss import checkpoint as checkpoint_lib
from learned_loss import cli, evaluation, loop, policy, provenance, report, rlhf_pipeline, train
from learned_loss import metrics as metrics_lib
from learned_loss import model as model_lib
from learned_loss.meta import comparison

TOKEN = {"mle": "mle", "mle_clean_valid": "mle_clean_valid", "mle_2x": "mle_2x",
         "loss_truncation": "loss_truncation", "learned_tbptt": "learned_offline",
         "learned_es": "learned_offline", "learned_online": "learned_online"}
# RLHF objective -> (rlhf_pipeline algorithm, its stage directory).
RLHF = {"ppo": "ppo", "rloo": "rloo", "dpo": "dpo", "learned_preference": "dpo",
        "learned_reward": "rloo"}
META_TRAINED = ("learned_tbptt", "learned_es", "learned_preference", "learned_reward")
FAMILY_SET = "compare"


def cell_key(objective: str, noise: str, seed: int) -> str:
    return f"{objective}-{noise}-s{seed}"


def _copy(config) -> ml_collections.ConfigDict:
    """An unlocked, independent copy of a (possibly locked) config section."""
    return ml_collections.ConfigDict(config.to_dict())


def check(config) -> None:
    """Refuses a config the run cannot do, before anything is trained (cli.UserError)."""
    known = tuple(TOKEN) + tuple(RLHF)
    unknown = [o for o in config.objectives if o not in known]
    if unknown:
        raise cli.UserError(f"unknown objectives {unknown} in config.objectives; choose among "
                            f"{list(known)}")
    if len(set(config.objectives)) != len(config.objectives):
        raise cli.UserError(f"config.objectives names an objective twice: "
                            f"{list(config.objectives)}")
    missing = [n for n in config.noise_order if n not in config.noises]
    if missing:
        raise cli.UserError(f"noise_order names {missing}, which are not in config.noises "
                            f"{sorted(config.noises)}")
    if any(o in RLHF for o in config.objectives) and "mle" not in config.objectives:
        raise cli.UserError("the RLHF objectives start from the MLE model of the same noise "
                            "and seed (their SFT policy): add 'mle' to config.objectives")
    if config.pretrain.model.to_dict() != config.model.to_dict():
        raise cli.UserError("config.pretrain.model differs from config.model; the objectives "
                            "fine-tune the pre-trained model, so override both alike")
    if config.pretrain.data.seq_len != config.data.seq_len:
        raise cli.UserError(f"config.pretrain.data.seq_len={config.pretrain.data.seq_len} "
                            f"differs from config.data.seq_len={config.data.seq_len}")
    if config.seeds < 1 or config.steps < 1 or config.eval.curve_points < 1:
        raise cli.UserError("seeds, steps and eval.curve_points must each be at least 1")
    for name in META_TRAINED:
        path = config.artifacts.get(name, "")
        if name in config.objectives and path and not os.path.isdir(path):
            raise cli.UserError(f"artifacts.{name}={path!r} is not a directory; point it at "
                                f"WORKDIR/artifact of a finished meta-training run, or leave "
                                f"it empty to meta-train in this run")


# ---- 1. pre-training ------------------------------------------------------------------------


def config_hash(config) -> str:
    """A short hash of a config's resolved values (the pre-training cache key)."""
    return provenance.config_hash(config)


def cache_root(configured: str = "") -> str:
    return configured or os.environ.get("LEARNED_LOSS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "learned_loss")


def pretrain_dir(config) -> str:
    return os.path.join(cache_root(config.cache_dir), f"pretrain-{config_hash(config.pretrain)}")


def finished(workdir: str, num_steps: int) -> bool:
    """Whether `workdir` holds a checkpoint at `num_steps`."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return False
    return num_steps in checkpoint_lib.Checkpointer(workdir, read_only=True).steps()


def pretrained(config, pretrain_run: Callable[[Any, str], Any]) -> policy.Policy:
    """The pre-trained policy: trained into the cache unless a finished run is there. A lock
    file beside the cache entry lets parallel runs (a sweep's points) share it: one trains,
    the others wait and reuse it."""
    path = pretrain_dir(config)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if finished(path, config.pretrain.train.num_steps):
                logging.info("reusing the pre-trained checkpoint in %s", path)
            else:
                logging.info("pre-training into %s", path)
                pretrain_run(config.pretrain, path)
                if not finished(path, config.pretrain.train.num_steps):
                    loop.raise_if_stopped("the end of pre-training")
                    raise cli.UserError(f"pre-training in {path} stopped before step "
                                        f"{config.pretrain.train.num_steps}; re-run to resume it")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return policy.load(path)


# ---- 2. meta-training -----------------------------------------------------------------------


def artifact_path(config, workdir: str, name: str) -> str:
    return config.artifacts.get(name, "") or os.path.join(workdir, "meta", name, "artifact")


def meta_train(config, workdir: str, name: str, pretrained_dir: str = "",
               sft_dir: str = "") -> str:
    """Meta-trains objective `name` in WORKDIR/meta/NAME unless its artifact exists; returns
    the artifact's path. The token losses' inner runs start from `pretrained_dir`; the learned
    reward's RL runs from the SFT policy in `sft_dir`."""
    from learned_loss.meta import preference_run, reward_run, run as token_run

    path = artifact_path(config, workdir, name)
    if os.path.isdir(path):
        return path
    meta_dir = os.path.join(workdir, "meta", name)
    cfg = _copy(config.meta[name])
    logging.info("meta-training %s in %s", name, meta_dir)
    if name in ("learned_tbptt", "learned_es"):
        cfg.inner.init_from = pretrained_dir
        token_run.run(cfg, meta_dir)
    elif name == "learned_preference":
        preference_run.run(cfg, meta_dir)
    else:
        cfg.rlhf.sft_from = sft_dir
        cfg.rlhf.tasks.families = tuple(config.families)
        reward_run.run(cfg, meta_dir)
    if not os.path.isdir(path):
        loop.raise_if_stopped(f"the end of meta-training {name}")
        raise cli.UserError(f"meta-training {name} in {meta_dir} stopped before writing its "
                            f"artifact; re-run to resume it")
    return path


# ---- 3. token-level objectives --------------------------------------------------------------


def noisy_view(config, artifact: str = "") -> ml_collections.ConfigDict:
    """The config as learned_loss/meta/comparison.py reads it (one family set, FAMILY_SET)."""
    view = _copy(config)
    view.family_sets = {FAMILY_SET: tuple(config.families)}
    view.learned.artifacts = {"default": artifact}
    view.learned.closed_forms = {"default": ""}
    view.transfer = ml_collections.ConfigDict({"model": config.model.to_dict()})
    return view


def score(config, model, params, reference_params, data: comparison.Data, seed: int) -> dict:
    """The cell's metrics (comparison.score, with the KL to the pre-trained model) and its
    per-family exact match."""
    scored = comparison.score(config, model, params, data, reference_params=reference_params,
                              rng=jax.random.key(seed))
    families = scored.pop("families")
    return {"metrics": scored, "families": families}


def greedy_exact_match(config, model, params, data: comparison.Data) -> float:
    return evaluation.evaluate(model, params, data.test_examples,
                               batch_size=config.eval.batch_size,
                               max_new_tokens=config.eval.max_new_tokens)["overall"]["exact_match"]


def token_count(config, objective: str, steps: int) -> int:
    """Demonstration tokens processed: steps x batch x T, twice online (the look-ahead's clean
    validation batch at every step)."""
    tokens = steps * config.batch_size * config.data.seq_len
    return tokens * (1 + config.learned.lookahead) if objective == "learned_online" else tokens


def write_sft(config, workdir: str, model_cfg, params, step: int) -> None:
    """Keeps a fine-tuned model as a policy workdir (`policy.load` reads it; the RLHF
    pipeline's sft_from): a provenance.json with a fine-tuning config and one checkpoint."""
    sft = _copy(config.pretrain)
    sft.tasks.families = tuple(config.families)
    sft.train.num_steps = step
    sft.seed = 0
    model = model_lib.build(model_lib.ModelConfig.from_config(model_cfg))
    optimizer = train.make_optimizer(sft.optimizer, step)
    state = train.init_state(model, optimizer, jax.random.key(0), config.data.seq_len)
    state = state._replace(params=params, opt_state=optimizer.init(params),
                           step=jnp.asarray(step, jnp.int32))
    tmp = workdir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    provenance.write(tmp, provenance.collect(sft, extra={"kept_by": "compare_objectives",
                                                         "objective": "mle"}))
    ckpt = checkpoint_lib.Checkpointer(tmp, async_save=False)
    ckpt.save(step, state, {"model": model_cfg.to_dict()})
    ckpt.close()
    shutil.rmtree(workdir, ignore_errors=True)
    os.replace(tmp, workdir)


def sft_dir(workdir: str, noise: str, seed: int) -> str:
    return os.path.join(workdir, "sft", f"{noise}-s{seed}")


def rlhf_shared_dir(workdir: str, noise: str, seed: int) -> str:
    """The preference pairs and reward model of the RLHF cells from one SFT policy."""
    return os.path.join(workdir, "rlhf", f"{noise}-s{seed}")


# ---- 4. RLHF objectives ---------------------------------------------------------------------


def rlhf_config(config, objective: str, noise: str, seed: int, workdir: str,
                artifacts: Mapping[str, str], best_of_n: bool = False
                ) -> ml_collections.ConfigDict:
    """The pipeline config of one RLHF cell; best-of-n only when `best_of_n`."""
    r = _copy(config.rlhf)
    r.sft_from = sft_dir(workdir, noise, seed)
    r.shared_dir = rlhf_shared_dir(workdir, noise, seed)
    if not best_of_n:
        r.best_of_n.samples = 0
    r.seed = seed
    r.algorithms = (RLHF[objective],)
    r.tasks.families = tuple(config.families)
    r.data.data_dir = config.data.data_dir
    if objective == "learned_preference":
        r.dpo.loss_type = "learned"
        r.dpo.label_smoothing = 0.0
        r.dpo.learned_path = artifacts["learned_preference"]
    if objective == "learned_reward":
        r.rl.reward = "learned"
        r.rl.learned_reward_path = artifacts["learned_reward"]
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
GRID_KEYS = ("variant", "objectives", "seeds", "noise_order", "noises", "meta", "artifacts",
             "rlhf", "cache_dir")


def cell_settings(config, objective: str, noise: str) -> str:
    """The hash of the settings behind one cell: the config without GRID_KEYS, plus its own
    noise kind, its own meta-training and artifact (a learned objective) and the RLHF
    settings (an RLHF objective)."""
    values = {k: v for k, v in config.to_dict().items() if k not in GRID_KEYS}
    values["noise"] = config.noises[noise].to_dict()
    if objective in META_TRAINED:
        values["meta"] = config.meta[objective].to_dict()
        values["artifact"] = config.artifacts.get(objective, "")
    if objective in RLHF:
        values["rlhf"] = config.rlhf.to_dict()
    return provenance.config_hash(values)


class Grid:
    """Cells to do, done, and the progress line with an ETA over the whole grid.

    `settings` maps each cell's key to the hash of its settings (`cell_settings`); a finished
    cell computed under other settings is refused, not reported as if it had these."""

    def __init__(self, workdir: str, settings: Mapping[str, str], clock=time.monotonic):
        self.workdir = workdir
        self.settings = dict(settings)
        self.total = len(self.settings)
        self.done = {k for k in self.settings if os.path.exists(self.path(k))}
        for key in sorted(self.done):
            self._check(key)
        self._todo_at_start = self.total - len(self.done)
        self._finished = 0
        self._clock = clock
        self._start = clock()

    def restart_clock(self) -> None:
        self._start = self._clock()

    def path(self, key: str) -> str:
        return os.path.join(self.workdir, "cells", f"{key}.json")

    def _check(self, key: str) -> None:
        path = self.path(key)
        try:
            with open(path) as f:
                found = json.load(f).get("config_hash")
        except (json.JSONDecodeError, AttributeError) as e:
            raise cli.UserError(f"{path} is unreadable ({e}); remove it to recompute the "
                                f"cell") from None
        if found != self.settings[key]:
            raise cli.UserError(f"{path} was computed with other settings (config hash "
                                f"{found}, now {self.settings[key]}); use a new workdir or "
                                f"remove the cells to recompute")

    def record(self, key: str, cell: Mapping[str, Any]) -> None:
        evaluation.write_json(self.path(key), dict(cell, config_hash=self.settings[key]))
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


def cell_record(objective, noise, seed, scored, *, seconds, tokens, curve, facts) -> dict:
    return {"objective": objective, "noise": noise, "seed": seed, **scored,
            "compute": {"seconds": seconds, "tokens": int(tokens)}, "curve": curve,
            "facts": facts}


def run(config, workdir: str, pretrain_run: Callable[[Any, str], Any], log=logging.info
        ) -> dict[str, str]:
    """The whole job (module docstring). Returns the report's paths."""
    check(config)
    start = time.time()
    objectives = list(config.objectives)
    token = [o for o in objectives if o in TOKEN]
    if "mle" in token:  # The baseline (and the RLHF objectives' SFT) first.
        token.remove("mle")
        token.insert(0, "mle")
    rlhf_objs = [o for o in objectives if o in RLHF]
    seeds = range(config.seeds)
    grid = Grid(workdir, {cell_key(o, n, s): cell_settings(config, o, n)
                          for n in config.noise_order for o in objectives for s in seeds})
    log(f"compare: {grid.total} cells ({len(grid.done)} done) in {workdir}")

    pre = pretrained(config, pretrain_run)
    view = noisy_view(config)
    data = {n: comparison.build_data(view, FAMILY_SET, n) for n in config.noise_order}
    provenance.write(workdir, provenance.collect(config, extra={
        "pretrain": {"workdir": pre.workdir, "step": pre.step,
                     "config_hash": config_hash(config.pretrain)},
        "data_hashes": {n: d.info.config_hash for n, d in data.items()},
        "cells": grid.total}))

    artifacts = {name: meta_train(config, workdir, name, pre.workdir)
                 for name in ("learned_tbptt", "learned_es", "learned_preference")
                 if name in objectives}

    # Token-level objectives: one vmapped group per (objective, noise).
    grid.restart_clock()  # The ETA counts cells only, not pre- and meta-training.
    step0: dict[str, float] = {}
    for noise in config.noise_order:
        for objective in token:
            todo = [s for s in seeds if cell_key(objective, noise, s) not in grid.done]
            if objective == "mle" and rlhf_objs:
                todo = sorted(set(todo) | {s for s in seeds
                                           if not os.path.isdir(sft_dir(workdir, noise, s))})
            if not todo:
                continue
            loop.raise_if_stopped(f"{objective} on {noise}")
            if noise not in step0:
                step0[noise] = greedy_exact_match(config, pre.model, pre.params, data[noise])
            _token_group(config, workdir, grid, objective, noise, todo, data[noise], pre,
                         artifacts, step0[noise], bool(rlhf_objs))
            log(f"{grid.progress()} | {objective} on {noise}")

    if "learned_reward" in objectives:
        first = config.noise_order[0]
        artifacts["learned_reward"] = meta_train(config, workdir, "learned_reward",
                                                 sft_dir=sft_dir(workdir, first, 0))
    for noise in config.noise_order:
        for objective in rlhf_objs:
            for seed in seeds:
                key = cell_key(objective, noise, seed)
                if key in grid.done:
                    continue
                loop.raise_if_stopped(key)
                _rlhf_cell(config, workdir, grid, objective, noise, seed, data[noise], pre,
                           artifacts)
                log(f"{grid.progress()} | {key}")
    log(f"compare: all {grid.total} cells done in {time.time() - start:.0f} s")
    return report.write(workdir)


def _token_group(config, workdir, grid, objective, noise, todo, data, pre, artifacts,
                 em0, keep_sft):
    method = TOKEN[objective]
    cfg = noisy_view(config, artifacts.get(objective, ""))
    cells = [comparison.Cell(FAMILY_SET, noise, method, config.model.variant, s) for s in todo]
    curves = {s: [{"step": 0, "exact_match": em0}] for s in todo}

    def on_segment(step, model, inners):
        for s, inner in zip(todo, inners):
            curves[s].append({"step": step, "exact_match": greedy_exact_match(
                config, model, inner["params"], data)})

    t0 = time.time()
    model, inners, facts = comparison.train_cells(
        cfg, cells, data, init_params=pre.params, segments=config.eval.curve_points,
        on_segment=on_segment)
    scored = {s: score(config, model, inner["params"], pre.params, data, s)
              for s, inner in zip(todo, inners)}
    seconds = (time.time() - t0) / len(todo)
    for s, inner in zip(todo, inners):
        if keep_sft and objective == "mle":
            write_sft(config, sft_dir(workdir, noise, s), config.model, inner["params"],
                      facts["steps"])
        key = cell_key(objective, noise, s)
        if key in grid.done:
            continue
        curve = curves[s] + [{"step": facts["steps"],
                              "exact_match": scored[s]["metrics"]["exact_match"]}]
        cell_facts = {k: v for k, v in facts.items() if k != "online_skipped"}
        if "online_skipped" in facts:
            cell_facts["online_skipped"] = facts["online_skipped"][todo.index(s)]
        cell_facts.update(data_hash=data.info.config_hash, method=method,
                          artifact=artifacts.get(objective, ""))
        grid.record(key, cell_record(objective, noise, s, scored[s], seconds=seconds,
                                     tokens=token_count(config, objective, facts["steps"]),
                                     curve=curve, facts=cell_facts))


def _rlhf_cell(config, workdir, grid, objective, noise, seed, data, pre, artifacts):
    key = cell_key(objective, noise, seed)
    run_dir = os.path.join(workdir, "runs", key)
    algorithm = RLHF[objective]
    over = os.path.join(workdir, "overoptimization.json")
    first_rl = algorithm != "dpo" and not os.path.exists(over)  # The report's plot.
    r = rlhf_config(config, objective, noise, seed, workdir, artifacts, best_of_n=first_rl)
    result = rlhf_pipeline.run(r, run_dir)
    t0 = time.time()
    stage = os.path.join(run_dir, algorithm)
    final = policy.load(stage)
    # The policy without PPO's value head: the pre-trained model's modules only.
    params = {k: v for k, v in final.params.items() if k in pre.params}
    scored = score(config, pre.model, params, pre.params, data, seed)
    if first_rl:
        evaluation.write_json(over, result)
    with open(grid.path(cell_key("mle", noise, seed))) as f:
        sft_cell = json.load(f)
    tokens = sft_cell["compute"]["tokens"] + rlhf_tokens(r, algorithm)
    curve = sft_cell["curve"] + rlhf_curve(stage, config.steps)
    # Compute: the SFT, the shared pairs and reward model (their cost when they were built,
    # whichever cell built them), and this cell's own algorithm, analysis and scoring.
    rlhf_seconds = result["seconds"]["shared"] + result["seconds"]["own"] + time.time() - t0
    facts = {"algorithm": algorithm, "sft_from": r.sft_from, "run_dir": run_dir,
             "shared_dir": r.shared_dir, "rlhf_seconds": rlhf_seconds,
             "shared_seconds": result["seconds"]["shared"], "best_of_n": first_rl,
             "data_hash": data.info.config_hash, "artifact": artifacts.get(objective, "")}
    grid.record(key, cell_record(objective, noise, seed, scored,
                                 seconds=sft_cell["compute"]["seconds"] + rlhf_seconds,
                                 tokens=tokens, curve=curve, facts=facts))
