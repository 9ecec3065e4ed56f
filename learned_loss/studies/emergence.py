"""The emergence study (experiments/emergence.py): is a jump in exact match a property of the
model or of the metric? (Wei et al. 2022; Schaeffer et al. 2023.)

`run(config, workdir)` pre-trains each model size of `sizes` from scratch on the text corpus
(`pretrain.steps` of MLE on every token of `pretrain.windows` windows; 0 skips it), then trains
it by MLE on character tasks whose answers are L = 3 to 17 tokens long (answer bytes and the EOS;
difficulty sets L), and at `checkpoints` evenly spaced steps of that training scores fresh
examples by teacher forcing: per answer token,
whether the argmax is the target. Per example, exact match is then `all(token_correct)` (the
same as greedy decoding's exact match, since greedy decoding with every earlier token right
makes the same choices). Per length bucket (`buckets`) it records exact match, per-token
accuracy p and p^L (learned_loss/studies/emergence_metrics.py).

Pre-training matters here: these sizes, trained on the tasks alone, stay near chance on
copying tasks for thousands of steps (copying needs attention that looks up a token's earlier
occurrence, which text pre-training builds), so there would be no rise to study.

WORKDIR/emergence/SIZE.json holds one size's evaluations (a re-run skips finished sizes);
WORKDIR/emergence.json the evaluations and the analysis (`analyse`): for each bucket, across
sizes at the last checkpoint and across checkpoints of the largest size, the point where exact
match first reaches `threshold` (the "jump"), how much of each curve's rise comes in one step
(`max_relative_step`: exact match against per-token accuracy), and observed exact match
against p^L.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from learned_loss import objectives
from learned_loss.core import cli, files, loop, pretraining, provenance, store, train
from learned_loss.core import model as model_lib
from learned_loss.data import tasks, text_corpus, training_rows
from learned_loss.meta import fit, lm_problem
from learned_loss.studies import emergence_metrics

STUDY_FILE = "emergence.json"
EVALS = "emergence"


def check(config) -> None:
    missing = [s for s in config.size_order if s not in config.sizes]
    if missing:
        raise cli.UserError(f"size_order names {missing}, which are not in sizes "
                            f"({sorted(config.sizes)})")
    if len(config.size_order) < 2:
        raise cli.UserError("an emergence study needs at least 2 model sizes")
    if config.checkpoints < 2 or config.steps % config.checkpoints:
        raise cli.UserError(f"checkpoints must be at least 2 and divide steps, got "
                            f"{config.checkpoints} and {config.steps}")
    edges = list(config.buckets)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise cli.UserError(f"buckets must be increasing answer lengths, got {edges}")


def model_config(config, size: str) -> model_lib.ModelConfig:
    m = ml_collections.ConfigDict(config.model.to_dict())
    m.update(config.sizes[size])
    m.variant = size
    return model_lib.ModelConfig.from_config(m)


def size_hash(config, size: str) -> str:
    """The settings one size's evaluations depend on (not the other sizes)."""
    values = config.to_dict()
    values["sizes"] = {size: values["sizes"][size]}
    return provenance.config_hash(values, drop=("variant", "size_order"))


@functools.partial(jax.jit, static_argnums=0)
def _argmax(model: model_lib.Model, params: Any, inputs: jax.Array) -> jax.Array:
    """[B, T] the most likely next token at every position (one program per model)."""
    return jnp.argmax(model.apply(params, inputs).logits, axis=-1)


def token_records(model: model_lib.Model, params: Any, rows: training_rows.Demonstrations,
                  batch_size: int = 256) -> list[dict]:
    """Per example {'length': L, 'token_correct': [L] bool}: the argmax of each answer token
    (and the EOS) under teacher forcing against its target."""
    out = []
    for start in range(0, len(rows), batch_size):
        inputs = jnp.asarray(rows.inputs[start:start + batch_size])  # [B, T]
        predicted = np.asarray(_argmax(model, params, inputs))  # [B, T]
        targets = rows.targets[start:start + batch_size]
        mask = rows.mask[start:start + batch_size] > 0
        for pred, target, m in zip(predicted, targets, mask):
            out.append({"length": int(m.sum()),
                        "token_correct": (pred[m] == target[m]).tolist()})
    return out


def bucket_metrics(records: Sequence[Mapping[str, Any]], edges: Sequence[int]) -> list[dict]:
    b = emergence_metrics.bucket_by_length(records, list(edges))
    return [{"low": int(lo), "high": int(hi), "count": int(n), "exact_match": float(em),
             "per_token_accuracy": float(p), "predicted_exact_match": float(pred)}
            for lo, hi, n, em, p, pred in zip(b.low, b.high, b.count, b.exact_match,
                                              b.per_token_accuracy, b.predicted_exact_match)]


def text_rows(config) -> tuple[training_rows.Demonstrations, training_rows.Demonstrations, dict]:
    """(train windows, test windows, the corpus's provenance) for pre-training: the reported
    text NLL is read on the test split."""
    corpus = pretraining.prepare_corpus(config, config.data.corpus_valid_fraction)
    seq_len = config.data.seq_len
    train = training_rows.text_windows(text_corpus.load_split(corpus, "train"), seq_len,
                                    config.pretrain.windows)
    valid = training_rows.text_windows(text_corpus.load_split(corpus, "test"), seq_len,
                                    config.pretrain.test_windows)
    return train, valid, corpus.provenance()


def pretrain(config, model, text, key) -> tuple[Any, float]:
    """`pretrain.steps` of MLE from a random initialisation on text windows (every token a
    loss token), in one compiled scan; returns the parameters and the NLL (nats per token) of
    the validation windows."""
    text_train, text_valid = text
    optimizer = train.make_optimizer(train.constant_adam(config.pretrain.lr), differentiable=True)
    runner = fit.plain(lambda rows: lm_problem.lm_problem(
        model, optimizer, objectives.build("mle"), *rows, batch_size=config.batch,
        valid_batch_size=config.batch, seq_len=config.data.seq_len))
    params = runner.inner(fit.fit_one(runner, (), key, (text_train, text_valid),
                                      config.pretrain.steps))["params"]
    rows = {k: jnp.asarray(v) for k, v in text_valid.batch().items()}
    nll = float(jax.jit(lm_problem.answer_nll, static_argnums=0)(model, params, rows))
    return params, nll


def train_size(config, size: str, train_rows, eval_rows, log, text=None) -> dict:
    """Pre-trains one size on `text` (train, test windows) unless it is None, then
    trains it on the tasks; its evaluation at every checkpoint of the task training."""
    cfg = model_config(config, size)
    model = model_lib.build(cfg)
    key = jax.random.key(config.seed)
    start = time.time()
    init_params, pre = None, {"steps": 0}
    if text is not None:
        init_params, nll = pretrain(config, model, text, jax.random.fold_in(key, 10_000))
        pre = {"steps": config.pretrain.steps, "test_nll": nll,
               "seconds": time.time() - start}
        log(f"emergence: {size} pre-trained {config.pretrain.steps} steps: text NLL {nll:.3f}")
    optimizer = train.make_optimizer(train.constant_adam(config.lr), differentiable=True)
    runner = fit.plain(lambda rows: lm_problem.lm_problem(
        model, optimizer, objectives.build("mle"), *rows, batch_size=config.batch,
        valid_batch_size=config.batch, seq_len=config.data.seq_len, init_params=init_params))
    evals = []

    def evaluate(step, carry):
        records = token_records(model, runner.inner(carry)["params"], eval_rows)
        tokens = sum(r["length"] for r in records)
        evals.append({"step": step, "buckets": bucket_metrics(records, config.buckets),
                      "per_token_accuracy": sum(sum(r["token_correct"]) for r in records)
                      / tokens,
                      "exact_match": float(np.mean([all(r["token_correct"])
                                                    for r in records]))})
        log(f"emergence: {size} step {step}: per-token accuracy "
            f"{evals[-1]['per_token_accuracy']:.3f}, exact match {evals[-1]['exact_match']:.3f}")

    steps = config.steps // config.checkpoints * config.checkpoints  # Whole segments.
    carry = fit.fit_one(runner, (), key, (train_rows, eval_rows), steps,
                        segments=config.checkpoints, on_segment=evaluate)
    evaluate(steps, carry)
    params = model_lib.matmul_param_count(cfg) - cfg.d_model * cfg.vocab_size
    return {"size": size, "params": params, "evals": evals, "pretrain": pre,
            "seconds": time.time() - start}


# ---- analysis -------------------------------------------------------------------------------


def _curve_analysis(xs: Sequence[float], em: Sequence[float], p: Sequence[float],
                    predicted: Sequence[float], threshold: float) -> dict:
    """One bucket's curve over xs (sizes or steps): jumps, smoothness, and observed exact match
    against the bucket's mean p^L_i."""
    residual = np.asarray(em) - np.asarray(predicted)
    return {"jump": emergence_metrics.jump_point(xs, em, threshold),
            "per_token_jump": emergence_metrics.jump_point(xs, p, threshold),
            "exact_match_step": emergence_metrics.max_relative_step(em),
            "per_token_step": emergence_metrics.max_relative_step(p),
            "p_to_the_l_max_error": float(np.max(np.abs(residual)))}


def analyse(sizes: Sequence[Mapping[str, Any]], threshold: float) -> dict:
    """Per length bucket, across sizes (last checkpoint) and across the largest size's
    checkpoints: jump points of exact match and of per-token accuracy, the largest one-step
    share of each curve's rise, and the largest gap between exact match and p^L."""
    sizes = sorted(sizes, key=lambda s: s["params"])
    n = [s["params"] for s in sizes]
    largest = sizes[-1]
    steps = [e["step"] for e in largest["evals"]]
    out = {"threshold": threshold, "across_sizes": [], "across_steps": [],
           "largest": largest["size"]}
    for j, bucket in enumerate(sizes[0]["evals"][-1]["buckets"]):
        label = {"low": bucket["low"], "high": bucket["high"]}
        for key, xs, evals in (("across_sizes", n, [s["evals"][-1] for s in sizes]),
                               ("across_steps", steps, largest["evals"])):
            rows = [e["buckets"][j] for e in evals]
            out[key].append(dict(label, **_curve_analysis(
                xs, [r["exact_match"] for r in rows], [r["per_token_accuracy"] for r in rows],
                [r["predicted_exact_match"] for r in rows], threshold)))
    return out


def _same_buckets(sizes: Sequence[Mapping[str, Any]]) -> None:
    shapes = {tuple((b["low"], b["high"]) for b in e["buckets"]) for s in sizes
              for e in s["evals"]}
    if len(shapes) != 1:
        raise cli.UserError("evaluations with different length buckets in one workdir; remove "
                            "WORKDIR/emergence and re-run")


def run(config, workdir: str, log: Callable[[str], None] = print) -> dict:
    """The whole study (module docstring). Returns what emergence.json holds."""
    check(config)
    seq_len = config.data.seq_len
    families = tasks.roles.resolve(config.tasks, "finetune")
    difficulties = tuple(config.difficulties)
    train_rows = training_rows.sample_demonstrations(families, config.rows, seq_len, difficulties,
                                                  config.seed)
    eval_rows = training_rows.sample_demonstrations(families, config.eval_rows, seq_len,
                                                 difficulties, config.seed + 10_000, "test")
    hashes = {"train": training_rows.rows_hash(train_rows), "eval": training_rows.rows_hash(eval_rows)}
    text, corpus = None, None
    if config.pretrain.steps:
        *text, corpus = text_rows(config)
        hashes.update(text_train=training_rows.rows_hash(text[0]),
                      text_test=training_rows.rows_hash(text[1]))
    provenance.write(workdir, provenance.collect(config, extra={
        "data_hashes": hashes, "text_corpus": corpus,
        tasks.roles.RECORD_KEY: tasks.roles.record({"finetune": families})}))
    results = []
    done = store.Store(os.path.join(workdir, EVALS))
    for size in config.size_order:
        settings = size_hash(config, size)
        result = done.read(size, settings)
        if result is None:
            loop.raise_if_stopped(f"size {size}")
            result = done.write(size, settings,
                                train_size(config, size, train_rows, eval_rows, log, text))
        results.append(result)
    _same_buckets(results)
    study = {"sizes": sorted(results, key=lambda s: s["params"]),
             "analysis": analyse(results, config.threshold),
             "families": list(families), "difficulties": list(difficulties),
             tasks.roles.RECORD_KEY: tasks.roles.record({"finetune": families}),
             "pretrain_steps": config.pretrain.steps}
    files.write_json(os.path.join(workdir, STUDY_FILE), study)
    return study
