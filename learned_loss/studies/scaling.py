"""The scaling study (experiments/scaling.py): pre-training runs over model sizes and token
budgets, under MLE and under a learned token loss, their test NLL, and the fits.

`run(config, workdir)`:
  1. the learned token loss: `config.artifacts.learned`, or meta-trained on the text corpus in
     WORKDIR/meta/learned (learned_loss/meta/run.py with data.source='text');
  2. every (objective, size, steps) point: a pre-training run from scratch in
     WORKDIR/runs/OBJECTIVE-SIZE-STEPS (learned_loss/core/pretraining.py), skipped when its final
     checkpoint exists, so a re-run resumes point by point;
  3. WORKDIR/scaling.json: one row per run {objective, size, steps, tokens, params (non-embedding,
     Kaplan et al. 2020), test_nll, seconds} and, per objective, the fits of
     learned_loss/studies/scaling_laws.py (`analyse`).

The test NLL is the mean token NLL (never a learned loss's weighted one) of the final model on
the same first windows of the corpus's test split for every run: the learned loss is
meta-trained on the validation split's NLL, so validation windows would score it on its own
meta-objective.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np

from learned_loss.core import checkpoint, cli, files, policy, pretraining, provenance, store
from learned_loss.core import model as model_lib
from learned_loss.data import pipeline, text_corpus
from learned_loss.meta import lm_problem
from learned_loss.meta import run as meta_run
from learned_loss.studies import scaling_laws

STUDY_FILE = "scaling.json"
OBJECTIVES = ("mle", "learned")
TIMING_FILE = "timing.json"
SETTINGS = "settings"  # runs/POINT/settings.json: the hash of the run's config
TEST_NLL = "test_nll"  # runs/POINT/test_nll.json: its test NLL, keyed by settings and corpus


class Point(NamedTuple):
    objective: str
    size: str
    steps: int

    @property
    def name(self) -> str:
        return f"{self.objective}-{self.size}-{self.steps}"


def points(config) -> list[Point]:
    """Every (objective, size, steps), objectives outermost."""
    return [Point(o, s, int(n)) for o in config.objectives for s in config.size_order
            for n in config.steps]


def check(config) -> None:
    """Refuses a config the study cannot run, before anything trains."""
    unknown = [o for o in config.objectives if o not in OBJECTIVES]
    if unknown or not config.objectives:
        raise cli.UserError(f"objectives must be among {OBJECTIVES}, got "
                            f"{tuple(config.objectives)}")
    missing = [s for s in config.size_order if s not in config.sizes]
    if missing:
        raise cli.UserError(f"size_order names {missing}, which are not in sizes "
                            f"({sorted(config.sizes)})")
    if len(set(config.size_order)) < 2:
        raise cli.UserError("a scaling study needs at least 2 model sizes in size_order")
    if not config.steps or any(int(n) < 1 for n in config.steps):
        raise cli.UserError(f"steps must be positive step counts, got {tuple(config.steps)}")
    path = config.artifacts.get("learned", "")
    if path and not files.isdir(path):
        raise cli.UserError(f"artifacts.learned={path!r} is not a folder; give the artifact of "
                            f"a finished meta-training run (WORKDIR/artifact) or leave it empty")


def non_embedding_params(model_config) -> int:
    """N of Kaplan et al. 2020 (section 2.1): the matmul parameters without the embedding."""
    cfg = model_lib.ModelConfig.from_config(model_config)
    return model_lib.matmul_param_count(cfg) - cfg.d_model * cfg.vocab_size


def point_config(config, point: Point, artifact: str = "") -> ml_collections.ConfigDict:
    """The pre-training config of one point: its size, steps, warm-up and objective."""
    p = ml_collections.ConfigDict(config.pretrain.to_dict())
    p.model.update(config.sizes[point.size])
    p.model.variant = point.size
    p.train.num_steps = point.steps
    p.train.eval_every = point.steps
    p.train.checkpoint_every = point.steps
    p.optimizer.warmup_steps = max(1, int(config.warmup_fraction * point.steps))
    if point.objective == "learned":
        p.objective = ml_collections.ConfigDict(dict(p.objective.to_dict(),
                                                     name="learned_token_loss", path=artifact))
    return p


def test_batches(config, corpus) -> list[dict]:
    """The first windows of the corpus's test split, as evaluation batches (every token a loss
    token), the same for every run."""
    d = config.pretrain.data
    batches = pipeline.make_eval_batches(text_corpus.load_split(corpus, "test"),
                                         seq_len=d.seq_len, batch_size=d.global_batch_size,
                                         max_batches=config.pretrain.train.eval_batches)
    return [dict(b, mask=np.ones(b["targets"].shape, np.float32)) for b in batches]


_nll = jax.jit(lm_problem.answer_nll, static_argnums=0)


def test_nll(run_dir: str, batches: Sequence[Mapping[str, np.ndarray]]) -> float:
    """The mean token NLL of a run's newest checkpoint on `batches`."""
    trained = policy.load(run_dir)
    return float(np.mean([_nll(trained.model, trained.params, b) for b in batches]))


def learned_artifact(config, workdir: str) -> str:
    """The learned token loss's artifact: configured, or meta-trained in WORKDIR/meta/learned."""
    if config.artifacts.get("learned", ""):
        return config.artifacts.learned
    meta_dir = os.path.join(workdir, "meta", "learned")
    path = os.path.join(meta_dir, meta_run.ARTIFACT)
    m = ml_collections.ConfigDict(config.meta.to_dict())
    d = config.pretrain.data  # The same corpus as the runs (whatever the command line set).
    m.data.text_dir, m.data.pattern = d.text_dir, d.pattern
    m.data.corpus_valid_fraction, m.data.data_dir = d.valid_fraction, d.data_dir
    store.ensure("meta-training", lambda: files.isdir(path), lambda: meta_run.run(m, meta_dir),
                 meta_dir)
    return path


# ---- analysis -------------------------------------------------------------------------------


def _kaplan(n: np.ndarray, loss: np.ndarray, fit_cfg) -> dict:
    fit = scaling_laws.fit_kaplan(n, loss)
    ci = scaling_laws.bootstrap_exponents(n, loss, num_resamples=fit_cfg.bootstrap,
                                          level=fit_cfg.level, full=fit)["alpha"]
    out = {"alpha": fit.alpha, "n_c": fit.n_c, "r2": fit.r2,
           "alpha_interval": [ci.low, ci.high]}
    ex = scaling_laws.extrapolation_check(n, loss)
    out["extrapolation"] = {"held_out_n": ex.held_out_n, "observed": ex.observed.tolist(),
                            "predicted": ex.predicted.tolist(),
                            "relative_error": ex.max_abs_relative_error}
    return out


def _chinchilla(n: np.ndarray, d: np.ndarray, loss: np.ndarray, fit_cfg) -> dict:
    grid = fit_cfg.get("grid", scaling_laws.DEFAULT_GRID)
    fit = scaling_laws.fit_chinchilla(n, d, loss, grid=grid)
    ci = scaling_laws.bootstrap_exponents(n, loss, d, num_resamples=fit_cfg.bootstrap,
                                          level=fit_cfg.level, grid=grid, full=fit)
    out = {"e": fit.e, "a": fit.a, "b": fit.b, "alpha": fit.alpha, "beta": fit.beta,
           "huber": fit.loss, "alpha_interval": [ci["alpha"].low, ci["alpha"].high],
           "beta_interval": [ci["beta"].low, ci["beta"].high]}
    try:
        ex = scaling_laws.extrapolation_check(n, loss, d, grid=grid)
        out["extrapolation"] = {"held_out_n": ex.held_out_n, "observed": ex.observed.tolist(),
                                "predicted": ex.predicted.tolist(),
                                "relative_error": ex.max_abs_relative_error}
    except ValueError as e:  # Too few runs besides the largest model's.
        out["extrapolation"] = {"error": str(e)}
    return out


def analyse(rows: Sequence[Mapping[str, Any]], fit_cfg) -> dict[str, dict]:
    """Per objective: Kaplan's L(N) on the runs of the largest budget (the nearest to
    convergence), with a bootstrap interval on alpha and the extrapolation to the largest model;
    Chinchilla's L(N, D) on every run, with intervals on alpha and beta and its extrapolation."""
    out = {}
    for objective in sorted({r["objective"] for r in rows}):
        mine = [r for r in rows if r["objective"] == objective]
        top = max(r["tokens"] for r in mine)
        last = [r for r in mine if r["tokens"] == top]
        n = np.array([r["params"] for r in last], np.float64)
        loss = np.array([r["test_nll"] for r in last], np.float64)
        result = {"kaplan_tokens": top, "kaplan": _kaplan(n, loss, fit_cfg)}
        n_all = np.array([r["params"] for r in mine], np.float64)
        d_all = np.array([r["tokens"] for r in mine], np.float64)
        loss_all = np.array([r["test_nll"] for r in mine], np.float64)
        if len(mine) >= 5 and len(set(d_all)) >= 2:
            result["chinchilla"] = _chinchilla(n_all, d_all, loss_all, fit_cfg)
        out[objective] = result
    return out


def advantage(rows: Sequence[Mapping[str, Any]], baseline: str = "mle") -> list[dict]:
    """Per (size, tokens) the learned objective's NLL minus MLE's (negative: learned is better)."""
    by = {(r["objective"], r["size"], r["tokens"]): r for r in rows}
    out = []
    for (objective, size, tokens), r in sorted(by.items()):
        if objective == baseline or (baseline, size, tokens) not in by:
            continue
        base = by[(baseline, size, tokens)]
        out.append({"objective": objective, "size": size, "params": r["params"],
                    "tokens": tokens, "difference": r["test_nll"] - base["test_nll"]})
    return out


# ---- the run --------------------------------------------------------------------------------


def run(config, workdir: str, log: Callable[[str], None] = print) -> dict:
    """The whole study (module docstring). Returns what scaling.json holds."""
    check(config)
    files.makedirs(workdir)
    todo = points(config)
    artifact = learned_artifact(config, workdir) if "learned" in config.objectives else ""
    corpus = pretraining.prepare_corpus(config.pretrain)
    provenance.write(workdir, provenance.collect(config, corpus_hash=corpus.corpus_hash, extra={
        "points": len(todo), "learned_artifact": artifact,
        "data_hashes": {"text_corpus": corpus.corpus_hash}}))
    batches = test_batches(config, corpus)
    rows = []
    tokens_per_step = config.pretrain.data.global_batch_size * config.pretrain.data.seq_len
    for i, point in enumerate(todo):
        run_dir = os.path.join(workdir, "runs", point.name)
        cfg = point_config(config, point, artifact)
        timing = os.path.join(run_dir, TIMING_FILE)
        store.Store(run_dir).claim(SETTINGS, provenance.config_hash(cfg))
        store.ensure(f"run {point.name}", lambda: checkpoint.finished(run_dir, point.steps),
                     lambda: pretraining.run(cfg, run_dir), run_dir, timing=timing)
        seconds = store.recorded_seconds(timing)
        # The test NLL is kept beside the run, keyed by its settings and the corpus, so that a
        # re-run does not restore every finished checkpoint again.
        scored = store.Store(run_dir)
        digest = provenance.config_hash({"run": provenance.config_hash(cfg),
                                         "corpus": corpus.corpus_hash})
        nll = scored.read(TEST_NLL, digest)
        if nll is None:
            nll = scored.write(TEST_NLL, digest, {"test_nll": test_nll(run_dir, batches)})
        rows.append({"objective": point.objective, "size": point.size, "steps": point.steps,
                     "tokens": point.steps * tokens_per_step,
                     "params": non_embedding_params(cfg.model),
                     "test_nll": nll["test_nll"], "seconds": seconds})
        log(f"scaling: {i + 1}/{len(todo)} {point.name}: test NLL "
            f"{rows[-1]['test_nll']:.4f} ({seconds:.0f} s)")
    study = {"rows": rows, "fits": analyse(rows, config.fit), "advantage": advantage(rows),
             "learned_artifact": artifact}
    files.write_json(os.path.join(workdir, STUDY_FILE), study)
    return study
