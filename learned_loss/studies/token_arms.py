"""The token-level arms: how each method trains a model from noisy demonstrations and how a
model is scored. The noisy-demonstration grid (noisy_demonstrations.py) and the objective
comparison (compare.py) both train their token-level cells here.

A cell is (family set, noise, method, model, seed). Each trains a fresh model on the family
set's noisy train split with the method, then scores greedy exact match and the graded score on
the set's clean `test` split (inputs no split that any run trains on holds: `tasks.partition`),
plus the answer negative log-likelihood there. A seed resamples the data: each seed's dataset
(train inputs, which of them are corrupted and how, validation and test inputs) is built with
its own seed, and it draws its own initialisation and batches; cells of the same seed share
their data, so arms are compared on the same examples (paired by seed). The family sets are the
evaluation families: no learned objective may have been meta-trained, validated or tuned on
them (`check_roles`).

Methods (all with the same inner optimizer and batch):
  mle               maximum likelihood on the noisy demonstrations
  mle_clean         MLE on the same inputs with their gold answers: the headroom's top
  mle_clean_valid   MLE with the clean validation examples (what the meta-learned methods see
                    as their meta-objective) added to the training data
  mle_2x            MLE with twice the step budget
  mle_early_stop    MLE that keeps the parameters with the best exact match on the clean
                    validation examples, evaluated `early_stopping.evaluations` times along the
                    run (the last evaluation is the end of the run)
  loss_truncation   Kang and Hashimoto 2020 (objectives/loss_truncation.py)
  gce, sce, bootstrap  the robust losses of objectives/robust.py (settings in `robust`)
  learned_offline   the learned token loss of a meta-training artifact, frozen
  learned_online    Meta-Weight-Net-style online meta-weighting on the clean validation examples
  learned_closed_form  a closed form fitted to learned_offline's network (interpret.py), frozen

`train_cells` trains the seeds of one (family set, noise, method, model) as one
program; `score` scores a model; `data_seen` is what a method saw.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from learned_loss import objectives
from learned_loss.core import errors, evaluation, hosts, train
from learned_loss.core import model as model_lib
from learned_loss.data import instruction_tasks, paths, tasks, training_rows
from learned_loss.meta import base, fit, lm_problem, outer
from learned_loss.objectives import artifact as artifact_lib

METHODS = ("mle", "mle_clean", "mle_clean_valid", "mle_2x", "mle_early_stop", "loss_truncation",
           "gce", "sce", "bootstrap", "learned_offline", "learned_online")
ROBUST = ("gce", "sce", "bootstrap")  # objectives/robust.py; their settings: `config.robust`
EARLY_STOP = ("mle_early_stop",)
# The hand-made baselines: tuned, and the best of them chosen, on families of their own
# (studies/tuning.py; the meta role `tuning`).
HAND_MADE = ("loss_truncation",) + ROBUST + EARLY_STOP
TUNED = ("loss_truncation",) + ROBUST  # the ones with a setting to tune (tuning.TUNABLE)
# Also available: the closed form fitted to the offline artifact (learned_loss/meta/interpret.py).
EXTRA_METHODS = ("learned_closed_form",)
# What each method trains on besides the noisy demonstrations' inputs: its rows (`rows_of`).
CLEAN_TRAIN = ("mle_clean",)  # the train inputs with their gold answers, instead of the noisy
WITH_VALID = ("mle_clean_valid",)  # the clean validation examples added to the noisy ones
# Learn from, or select by, the clean validation examples of the families they fine-tune on.
READS_VALID = ("mle_clean_valid", "mle_early_stop", "learned_online")
# The methods whose objective weighs each token (objectives/learned.py).
LEARNED = ("learned_offline", "learned_online", "learned_closed_form")
WEIGHT_FACTS = ("weight_noisy", "weight_clean")  # `weights_by_corruption`
FIT_FACTS = ("train_nll_noisy", "train_nll_clean")  # `fit_by_corruption`
# Facts of `train_cells` that hold one value per cell.
PER_CELL_FACTS = ("online_skipped", "corrupted_rows", "stopped_at",
                  "valid_exact_match") + WEIGHT_FACTS + FIT_FACTS
BUDGET = {"mle_2x": 2}  # steps in multiples of config.steps, where not 1
# The config sections only some methods read (configs/noisy_demonstrations.py's fine_tuning),
# by the methods that read them: a cell's settings hash leaves out the others (`unread`).
SECTION_READERS = {"loss_truncation": ("loss_truncation",), "robust": ROBUST,
                   "early_stopping": EARLY_STOP, "learned": LEARNED, "tuning": TUNED}
FINETUNE_METHODS = ("mle", "mle_2x")  # experiments/finetune.py trains them (finetune_config)


def unread(method: str) -> tuple[str, ...]:
    """The config sections of `SECTION_READERS` that `method` does not read."""
    return tuple(k for k, readers in SECTION_READERS.items() if method not in readers)


@dataclasses.dataclass(frozen=True)
class Cell:
    family_set: str
    noise: str
    method: str
    model: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.family_set}-{self.noise}-{self.method}-{self.model}-s{self.seed}"



@dataclasses.dataclass
class Data:
    train: training_rows.Demonstrations  # noisy
    train_clean: training_rows.Demonstrations  # the same inputs with their gold answers
    valid: training_rows.Demonstrations  # clean: the meta-objective of the learned methods
    test_rows: training_rows.Demonstrations  # clean test inputs
    test_examples: list  # scored: `eval.per_family` test inputs a family
    info: Any
    valid_examples: list  # early stopping and tuning: `eval.per_family` validation inputs a family


def evaluation_families(config, family_set: str) -> tuple[str, ...]:
    """The families of a family set, resolved for their role (fine-tuning; held-out families
    refused)."""
    return tasks.roles.resolve(config.tasks, "finetune", config.family_sets[family_set])


def data_args(config, family_set: str, noise: str, seed: int) -> dict[str, Any]:
    """build_instruction_tasks's arguments (but data_dir) of one (family set, noise kind,
    seed): the seed offsets `tasks.seed`, so each seed draws its own inputs and corruptions."""
    spec, t = config.noises[noise], config.tasks
    return dict(families=evaluation_families(config, family_set),
                examples_per_family=t.examples_per_family,
                difficulty=tasks.difficulty_range(t.difficulty), label_noise=float(spec.rho),
                seed=t.seed + seed, seq_len=config.data.seq_len,
                noise_kinds=tuple(spec.kinds), splits=dict(config.data.splits))


def build_data(config, family_set: str, noise: str, seed: int) -> Data:
    """The demonstrations of one (family set, noise kind, seed)."""
    info = hosts.first_on_process_zero(lambda: instruction_tasks.build_instruction_tasks(
        paths.data_dir(config.data.data_dir), **data_args(config, family_set, noise, seed)),
        "tasks built")
    seq_len = config.data.seq_len
    records = {split: instruction_tasks.load_split(info, split)
               for split in ("train", "validation", "test")}
    rows = {split: training_rows.encode_records(r, seq_len) for split, r in records.items()}
    chosen = {split: examples_of(records[split], config.eval.per_family)
              for split in ("validation", "test")}
    return Data(rows["train"], training_rows.encode_records(records["train"], seq_len, gold=True),
                rows["validation"], rows["test"], chosen["test"], info, chosen["validation"])


def examples_of(records, per_family: int) -> list:
    """The first `per_family` examples of each family (by prompt) of a split's records, with
    their gold answers, sorted by family."""
    examples = sorted((instruction_tasks.to_example(records[i], gold=True)
                       for i in range(len(records))), key=lambda e: (e.family, e.prompt))
    by_family: dict[str, list] = {}
    for e in examples:
        by_family.setdefault(e.family, []).append(e)
    return [e for f in sorted(by_family) for e in by_family[f][:per_family]]


def artifact_roles(path: str) -> dict[str, list[str]]:
    """The families by role of the meta-training behind an artifact, as the arm that uses it
    sees them (all meta roles); an artifact that does not record them is refused."""
    meta = artifact_lib.load(path).provenance
    # A token or preference loss keeps its run's provenance under 'provenance', a learned
    # reward at the top level.
    record = meta.get("provenance", meta).get("extra", {}).get(tasks.roles.RECORD_KEY)
    if record is None:
        raise tasks.TaskError(f"the artifact at {path} does not record the families its "
                              f"meta-training used ({tasks.roles.RECORD_KEY}), so it cannot be "
                              f"checked against the evaluation families; meta-train it again "
                              f"with this version")
    return tasks.roles.as_meta(record)


def task_roles(method: str, families) -> dict[str, list[str]]:
    """The task roles a method gives the families it fine-tunes on: fine-tuning, and clean
    validation examples when it learns from them."""
    return tasks.roles.record({"finetune": families,
                               "clean_validation": families if method in READS_VALID else ()})


def tuning_roles(config, method: str) -> dict[str, list[str]]:
    """The tuning families (meta role `tuning`) of a hand-made method whose settings are tuned
    (`tuning.seeds` > 0); no role otherwise."""
    tuned = method in HAND_MADE and config.tuning.seeds
    return tasks.roles.record({"tuning": config.tuning.families if tuned else ()})


def method_roles(config, method: str, family_set: str, noise: str) -> dict[str, list[str]]:
    """The families by role of one method on one family set: its task roles on the set, and
    the meta roles of the artifact it uses."""
    own = tasks.roles.merge(task_roles(method, evaluation_families(config, family_set)),
                            tuning_roles(config, method))
    if method in ("learned_offline", "learned_closed_form"):
        return tasks.roles.merge(own, artifact_roles(method_objective(config, method, noise)[1]))
    return own


def check_roles(config, cells: Sequence[Cell]) -> dict[str, dict[str, list[str]]]:
    """Every method's families by role; TaskError before anything trains when an evaluation
    family has a meta role in any method (`tasks.roles.refuse_conflicts`)."""
    arms, evaluated = {}, set()
    for cell in cells:
        evaluated.update(evaluation_families(config, cell.family_set))
        arms[cell.method] = tasks.roles.merge(
            arms.get(cell.method, {}), method_roles(config, cell.method, cell.family_set,
                                                    cell.noise))
    tasks.roles.refuse_conflicts(arms, sorted(evaluated))
    return arms


def model_of(cfg) -> model_lib.Model:
    return model_lib.build(model_lib.ModelConfig.from_config(cfg))


def method_objective(config, method: str, noise: str) -> tuple[objectives.Objective, str]:
    """(objective, where its theta came from) of a method."""
    if method in ("mle", "mle_clean", "mle_clean_valid", "mle_2x", "mle_early_stop"):
        return objectives.build("mle"), ""
    if method in ROBUST:
        return objectives.build(dict(config.robust, name=method)), ""
    if method == "loss_truncation":
        lt = config.loss_truncation
        return objectives.build({"name": "loss_truncation", "drop_fraction": lt.drop_fraction,
                                 "warmup_steps": lt.warmup_steps}), ""
    if method in ("learned_offline", "learned_closed_form"):
        field = "artifacts" if method == "learned_offline" else "closed_forms"
        paths_by_noise = dict(config.learned[field])
        path = paths_by_noise.get(noise) or paths_by_noise.get("default", "")
        if not path:
            raise errors.UserError(f"{method} needs learned.{field}[{noise!r}] or ['default']: "
                                   f"an artifact of experiments/meta_train.py (artifacts) or of "
                                   f"experiments/interpret_objective.py (closed_forms)")
        return objectives.build({"name": "learned_token_loss", "path": path}), path
    if method == "learned_online":
        return objectives.build({"name": "learned_token_loss",
                                 "features": tuple(config.learned.online_features),
                                 "hidden": config.learned.hidden}), "online"
    raise errors.UserError(f"unknown method {method!r}; choose among {METHODS + EXTRA_METHODS}")


def rows_of(method: str, data: Data) -> training_rows.Demonstrations:
    """The rows a method fine-tunes on."""
    if method in CLEAN_TRAIN:
        return data.train_clean
    if method in WITH_VALID:
        return training_rows.concatenate([data.train, data.valid])
    return data.train


def method_steps(config, method: str) -> int:
    """A method's fine-tuning steps: `config.steps` times its budget (`BUDGET`)."""
    return config.steps * BUDGET.get(method, 1)


def finetune_config(config, cell: Cell, base: ml_collections.ConfigDict
                    ) -> ml_collections.ConfigDict:
    """The experiments/finetune.py config that trains what an MLE cell trains: `base` (a
    configs/finetune.py config, whose logging, evaluation, checkpoints and mesh are kept) with the
    cell's seed, model, families, noise, data, batch, optimizer and steps, and batches drawn the
    cell's way (data.sampler 'uniform'). Started from the same parameters (a fresh
    initialisation, or `init_from` holding the cell's `init_params`), it takes the cell's steps:
    tests/test_one_engine.py checks that the parameters agree bitwise."""
    if cell.method not in FINETUNE_METHODS:
        raise errors.UserError(f"method {cell.method!r} is not fine-tuning by MLE on the noisy "
                               f"demonstrations; finetune_config takes {FINETUNE_METHODS}")
    spec = config.noises[cell.noise]
    out = ml_collections.ConfigDict(base.to_dict())
    out.seed = cell.seed
    model = config.model if cell.model == config.model.variant else config.transfer.model
    out.model = model.to_dict()
    out.tasks.update(config.tasks.to_dict())
    out.tasks.update(families=evaluation_families(config, cell.family_set),
                     label_noise=float(spec.rho), noise_kinds=tuple(spec.kinds),
                     seed=config.tasks.seed + cell.seed)
    out.data.update(data_dir=config.data.data_dir, seq_len=config.data.seq_len,
                    global_batch_size=config.batch_size, splits=dict(config.data.splits),
                    sampler="uniform")
    out.optimizer = config.optimizer.to_dict()
    out.train.num_steps = method_steps(config, cell.method)
    return out


def data_seen(config, method: str, data: Data) -> dict[str, int]:
    """What a method saw while fine-tuning, by kind: distinct noisy and clean demonstrations
    (rows it could draw) and the tokens it processed (steps x batch x T; online, the look-ahead's
    clean validation batch at every step besides)."""
    train = len(data.train)
    clean = {"mle_clean": train}.get(method, len(data.valid) if method in READS_VALID else 0)
    tokens = method_steps(config, method) * config.batch_size * config.data.seq_len
    if method == "learned_online":
        tokens *= 1 + config.learned.lookahead
    return {"noisy_demonstrations": 0 if method in CLEAN_TRAIN else train,
            "clean_demonstrations": clean, "gold_answers_in_pairs": 0,
            "gold_scored_prompts": 0, "labeler_queries": 0, "tokens": int(tokens)}


def train_cells(config, cells: Sequence[Cell], data: Sequence[Data], *, init_params: Any = None,
                segments: int = 1, on_segment=None, row_bucket: int = 0
                ) -> tuple[Any, list[Any], dict]:
    """Trains the models of `cells`, which differ only in their seed, as one program over
    the seeds (`fit.fit`): each seed its own data (`data[i]` for `cells[i]`), initialisation,
    batches and, online, theta.

    init_params: the parameters every seed starts from (a pre-trained checkpoint; its model
    must be `config.model`); None: a fresh initialisation from each seed's key.
    segments: the run is cut into this many equal spans of steps, and after each one but the
    last `on_segment(step, model, inners)` is called with the per-cell inner states (for
    learning curves). Segments draw their own keys, so a run in several differs from a run in
    one. Early stopping (`EARLY_STOP`) cuts the run into `early_stopping.evaluations` segments
    instead, and `on_segment` sees those.

    Returns (model, per-cell final inner states {'params', ..., 'reference' when the objective
    reads one}, facts shared by the cells). Per cell: facts['train_nll_noisy'] and
    ['train_nll_clean'] (`fit_by_corruption`); online, facts['online_skipped']; for a
    learned method facts['weight_noisy'] and ['weight_clean'] (`weights_by_corruption`); with
    early stopping the params are each cell's best on the clean validation examples, and
    facts['stopped_at'] and facts['valid_exact_match'] (at that step) are per cell.

    row_bucket: > 0 pads each cell's training rows to a multiple of it (rows that are never
    drawn: the same batches as unpadded), so that cells whose row counts differ (and differ
    from run to run, such as MLE with the gold answers of a seed's preference pairs) share
    one compiled program; facts['train_rows'] is then each cell's own count when they differ.
    0: every cell's rows must be as many.
    """
    first = cells[0]
    if any(dataclasses.replace(c, seed=first.seed) != first for c in cells):
        raise ValueError(f"cells of one group must differ only in seed: {cells}")
    if len(data) != len(cells):
        raise ValueError(f"{len(cells)} cells but data for {len(data)}")
    model_cfg = config.model if first.model == config.model.variant else config.transfer.model
    model = model_of(model_cfg)
    objective, source = method_objective(config, first.method, first.noise)
    own_rows = [rows_of(first.method, d) for d in data]
    counts = [len(r) for r in own_rows]
    if row_bucket > 0:
        size = -(-max(counts) // row_bucket) * row_bucket
        own_rows = [_padded(r, size) for r in own_rows]
    train_rows = training_rows.stack(own_rows)  # [S, N, T]
    valid_rows = training_rows.stack([d.valid for d in data])  # [S, V, T]
    steps = method_steps(config, first.method)
    online = first.method == "learned_online"
    runner = runner_of(config, model, objective, steps, online, init_params is not None)
    rows = (training_rows.Demonstrations(*map(jnp.asarray, train_rows)),
            training_rows.Demonstrations(*map(jnp.asarray, valid_rows)),
            jnp.asarray(counts, jnp.int32))  # [S]: the rows each seed draws from

    def per_cell(carry) -> list[Any]:
        return fit.unstack(runner.inner(carry), len(cells))

    best = None
    if first.method in EARLY_STOP:
        best = BestOnValidation(config, model, data)
        segments = early_stopping_evaluations(config, steps)

    def callback(step, carry):
        inners = per_cell(carry)
        if best is not None:
            best.offer(step, inners)
        if on_segment is not None:
            on_segment(step, model, inners)

    carry = fit.fit(runner, jax.tree.map(jnp.asarray, objective.theta),
                    fit.seed_keys([c.seed for c in cells]), rows, steps, segments=segments,
                    on_segment=callback, shared=init_params)
    inners = per_cell(carry)
    facts = {"steps": steps, "theta_source": source,
             "train_rows": counts[0] if len(set(counts)) == 1 else counts,
             "corrupted_rows": [int(c) for c in train_rows.corrupted.sum(axis=1)],
             "params": model_lib.param_count(inners[0]["params"]),
             "seeds_in_program": len(cells)}
    if online:
        facts["online_skipped"] = [float(s) for s in np.asarray(carry[3])]
    if first.method in LEARNED:  # How the final weights treat corrupted and clean rows.
        thetas = (fit.unstack(carry[0], len(cells)) if online
                  else [objective.theta] * len(cells))
        loss_fn = loss_program(model, objective)
        by_corruption = [weights_by_corruption(loss_fn, objective, theta, inner, d.train)
                         for theta, inner, d in zip(thetas, inners, data)]
        facts.update({k: [w[k] for w in by_corruption] for k in WEIGHT_FACTS})
    if best is not None:
        best.offer(steps, inners)
        inners = [dict(inner, params=p) for inner, p in zip(inners, best.params)]
        facts.update(stopped_at=best.steps, valid_exact_match=best.scores)
    fitted = [fit_by_corruption(model, inner["params"], d.train) for inner, d in zip(inners, data)]
    facts.update({k: [f[k] for f in fitted] for k in FIT_FACTS})
    return model, inners, facts


def runner_of(config, model: model_lib.Model, objective: objectives.Objective, steps: int,
              online: bool, from_params: bool) -> fit.Runner:
    """The runner of `train_cells`' program: fine-tuning `model` with `objective` for `steps`
    steps (online: meta-weighted, `outer.online_runner`) at the config's optimizer, batch and
    sequence length. Its data is (train rows, clean validation rows, how many of the train
    rows are drawn from), and with `from_params` ((those), the parameters every run starts
    from), which `fit.fit` passes as `shared`, an argument of the program.

    One runner per model, optimizer, objective settings (`objectives.program_key`; theta is an
    argument too), batch, sequence length and online settings (`train.program`), so that every
    group of the same settings and shapes (another noise kind, arm or set of seeds) runs the
    program compiled for the first."""
    optimizer = train.make_optimizer(config.optimizer, steps, differentiable=online)
    batch_size, seq_len = int(config.batch_size), int(config.data.seq_len)
    lookahead, outer_cfg = ((int(config.learned.lookahead), config.learned.online_outer.to_dict())
                            if online else (0, None))

    def build() -> fit.Runner:
        def problem_of(data) -> base.InnerProblem:
            (train_rows, valid_rows, count), init_params = data if from_params else (data, None)
            return lm_problem.lm_problem(model, optimizer, objective, train_rows, valid_rows,
                                         batch_size=batch_size, valid_batch_size=batch_size,
                                         seq_len=seq_len, init_params=init_params,
                                         num_train_rows=count)

        if online:
            return outer.online_runner(problem_of, outer.make_optimizer(outer_cfg),
                                       lookahead=lookahead)
        return fit.plain(problem_of)

    key = objectives.program_key(objective)
    if key is None:
        return build()
    return train.program(("token_arms.runner", model, optimizer, key, batch_size, seq_len,
                          lookahead, train.hashable(outer_cfg), from_params), build)


def _padded(rows: training_rows.Demonstrations, size: int) -> training_rows.Demonstrations:
    """`rows` followed by empty rows (no token counts, none corrupted) up to `size` rows."""
    extra = size - len(rows)
    return training_rows.Demonstrations(*[
        np.concatenate([v, np.zeros((extra,) + v.shape[1:], v.dtype)]) for v in rows])


def loss_program(model: model_lib.Model, objective: objectives.Objective):
    """`train.objective_loss` jitted, one program per model and objective settings."""
    key = objectives.program_key(objective)
    if key is None:
        return jax.jit(train.objective_loss(model, objective))
    return train.program(("token_arms.loss", model, key),
                         lambda: jax.jit(train.objective_loss(model, objective)))


def _split_by_corruption(rows: training_rows.Demonstrations, limit: int, history: Any = None):
    """(corrupted, clean) batches of up to `limit` rows each (None for a kind with no row),
    with each row's history in the run when `history` (an inner state's) is given. Each is
    padded with rows of empty mask to min(limit, N) rows, so that every batch of a group has
    one shape (one compiled program) and the padding counts in no mean."""
    size = min(limit, len(rows))
    for chosen in (rows.corrupted, ~rows.corrupted):
        index = np.flatnonzero(chosen)[:size]
        if not len(index):
            yield None
            continue
        padded = np.concatenate([index, np.zeros(size - len(index), index.dtype)])  # [size]
        batch = {k: jnp.asarray(v[padded]) for k, v in rows.batch().items()}
        batch["mask"] = batch["mask"] * jnp.asarray(np.arange(size) < len(index))[:, None]
        if history is not None:
            batch.update(lm_problem.history_of(history, jnp.asarray(padded)))
        yield batch


def fit_by_corruption(model, params: Any, rows: training_rows.Demonstrations, limit: int = 256
                      ) -> dict[str, float]:
    """The answer NLL of the final model on up to `limit` corrupted and `limit` clean training
    rows as demonstrated ('train_nll_noisy', 'train_nll_clean'; nan for a kind with no row):
    how far it memorised the corrupted answers."""
    return {key: float(_answer_nll(model, params, batch)) if batch is not None else float("nan")
            for key, batch in zip(FIT_FACTS, _split_by_corruption(rows, limit))}


def weights_by_corruption(loss_fn, objective: objectives.Objective, theta: Any, inner: Any,
                          rows: training_rows.Demonstrations, limit: int = 256
                          ) -> dict[str, float]:
    """The mean weight a learned objective (theta; `loss_fn`, its jitted
    train.objective_loss) gives the answer tokens of up to `limit` corrupted and `limit` clean
    training rows under the final model (inner['params']), at the run's last step: whether it
    tells the noise apart ('weight_noisy', 'weight_clean'; nan when a kind has no row). Both
    kinds are weighed in one batch, as training mixes them (a row-level weight is relative to
    its batch); a token-level weight is the same either way."""
    if objective.needs_reference:
        theta = {"objective": theta, "reference": inner["reference"]}
    parts = [(b, flag) for b, flag in zip(_split_by_corruption(rows, limit, inner.get("history")),
                                          (1.0, 0.0)) if b is not None]
    if not parts:
        return {key: float("nan") for key in WEIGHT_FACTS}
    batch = {k: jnp.concatenate([b[k] for b, _ in parts]) for k in parts[0][0]}
    batch["corrupted"] = jnp.concatenate([jnp.full(b["mask"].shape[:1], flag)
                                          for b, flag in parts])  # [B]
    if "step" in inner:
        batch["step"] = inner["step"]
    metrics = loss_fn(inner["params"], batch, theta)[1]
    return {key: float(metrics[key]) for key in WEIGHT_FACTS}


def early_stopping_evaluations(config, steps: int) -> int:
    """How many times early stopping evaluates a run of `steps` steps (at the end of each of
    that many equal segments); UserError when it is not within 1 .. steps."""
    n = config.early_stopping.evaluations
    if not 1 <= n <= steps:
        raise errors.UserError(f"early_stopping.evaluations is {n}, but a run of {steps} steps "
                               f"can be evaluated 1 to {steps} times; set it within that range")
    return n


def exact_match(config, model, params, data: Data, split: str = "test") -> float:
    """Greedy exact match on a split's examples: the clean test inputs (`data.test_examples`)
    or, with split 'validation', the clean validation examples (`data.valid_examples`)."""
    examples = data.valid_examples if split == "validation" else data.test_examples
    return evaluation.evaluate(model, params, examples, batch_size=config.eval.batch_size,
                               max_new_tokens=config.eval.max_new_tokens)["overall"]["exact_match"]


class BestOnValidation:
    """Early stopping over cells trained together: each cell's parameters at its best greedy
    exact match on its clean validation examples so far (the first of equal scores is kept)."""

    def __init__(self, config, model, data: Sequence[Data]):
        self.config, self.model, self.data = config, model, data
        self.scores = [-1.0] * len(data)
        self.steps = [0] * len(data)
        self.params: list[Any] = [None] * len(data)

    def offer(self, step: int, inners: Sequence[Any]) -> None:
        for i, (inner, d) in enumerate(zip(inners, self.data)):
            em = exact_match(self.config, self.model, inner["params"], d, "validation")
            if em > self.scores[i]:
                self.scores[i], self.steps[i], self.params[i] = em, step, inner["params"]


def train_cell(config, cell: Cell, data: Data) -> tuple[Any, dict]:
    """One cell (`train_cells` of one seed). Returns ((model, final inner state), facts)."""
    model, inners, facts = train_cells(config, [cell], [data])
    for key in PER_CELL_FACTS:
        if key in facts:
            facts[key] = facts[key][0]
    return (model, inners[0]), facts


_answer_nll = jax.jit(lm_problem.answer_nll, static_argnums=0)


def score(config, model, params, data: Data, *, reference_params: Any = None,
          rng: jax.Array | None = None) -> dict:
    """Greedy exact match, graded score and completion length on the clean test prompts, the
    test NLL, and per-prompt correctness ('per_prompt'); with `reference_params`, also the
    sequence-level KL to that model ('kl', sampled with `rng`)."""
    result = evaluation.evaluate(model, params, data.test_examples,
                                 batch_size=config.eval.batch_size,
                                 max_new_tokens=config.eval.max_new_tokens,
                                 reference_params=reference_params, rng=rng)
    rows = {k: jnp.asarray(v) for k, v in data.test_rows.batch().items()}
    overall = result["overall"]
    out = {"exact_match": overall["exact_match"], "graded": overall["graded"],
           "length": overall["length"], "test_nll": float(_answer_nll(model, params, rows)),
           "families": {f: v["exact_match"] for f, v in result["families"].items()},
           "per_prompt": result["per_prompt"]}
    if reference_params is not None:
        out["kl"] = overall["kl_to_reference"]
    return out
