"""The inner loop: a training state and one pure, jitted step generic over the objective.

`step(state, batch, theta)` takes the objective's parameters theta as an argument (empty for MLE)
so that an outer loop can differentiate through it (truncated backprop) or vmap it over a
population (evolution strategies).

Programs are built once per architecture and settings (`program`): equal optimizer configs give
the same optimizer object, an objective's loss on a model is one function, and the jitted steps
and state initialisers of equal models, optimizers, losses and shardings are one jitted function
each. A job that trains many runs of one shape (the comparison's cells) then traces and compiles
each program once, where a jitted closure built afresh per run is compiled again every time.

Shapes: B batch, T sequence length.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Hashable, Mapping, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from learned_loss import objectives
from learned_loss.core import errors, sharding
from learned_loss.core import model as model_lib
from learned_loss.objectives import mle

T = TypeVar("T")

# key -> the object `program` built for it (jitted functions, loss functions, optimizers).
_PROGRAMS: dict[Hashable, Any] = {}


def program(key: Hashable, build: Callable[[], T]) -> T:
    """`build()` the first time `key` is asked for, the same object every time after.

    jax.jit compiles per function object: a jitted closure built afresh for every run is traced,
    lowered and compiled again although the program is the same. Keyed by what the program
    depends on (models, settings, shardings; `hashable`, `tree_key`), it is built once. The key
    must name everything the built object closes over: a closed-over array is a constant of the
    program, so key it by its value or, better, pass it as an argument."""
    try:
        return _PROGRAMS[key]
    except KeyError:
        built = _PROGRAMS[key] = build()
        return built


def hashable(value: Any) -> Hashable:
    """A hashable stand-in for a config value: mappings (ConfigDicts too) as sorted (key,
    value) pairs and lists as tuples, recursively; TypeError for anything else unhashable."""
    if hasattr(value, "items"):
        return tuple(sorted((str(k), hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(hashable(v) for v in value)
    hash(value)
    return value


def tree_key(tree: Any) -> Hashable:
    """A hashable key of a pytree of hashable leaves (shardings, specs): its structure and
    leaves."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(leaves)


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array  # [] int32: optimizer steps taken.
    rng: jax.Array  # [2] uint32: raw key data (checkpointable), split once per step.


def learning_rate_schedule(cfg: Mapping[str, Any],
                           num_steps: int | None = None) -> optax.ScalarOrSchedule:
    """The optimizer config's rate: 'warmup_cosine' (linear warm-up to `lr`, then cosine decay
    to `lr * min_lr_ratio` at `num_steps`) or 'constant' (`lr` throughout, a float)."""
    kind = cfg.get("schedule", "warmup_cosine")
    if kind == "constant":
        return float(cfg["lr"])
    if kind != "warmup_cosine":
        raise errors.UserError(f"optimizer.schedule={kind!r} is not supported; use "
                               f"'warmup_cosine' or 'constant'")
    if num_steps is None:
        raise ValueError("a warmup_cosine schedule needs the run's num_steps")
    warmup = min(int(cfg["warmup_steps"]), max(num_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg["lr"], warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1), end_value=cfg["lr"] * cfg["min_lr_ratio"])


def _decay_mask(params):
    """Weight decay on matrices only; not on biases, norm scales or offsets (GPT-2 practice)."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(cfg: Mapping[str, Any], num_steps: int | None = None, *,
                   differentiable: bool = False) -> optax.GradientTransformation:
    """The one optimizer factory: global-norm clipping, then Adam (Kingma and Ba 2015) or AdamW
    (Loshchilov and Hutter 2019: decoupled weight decay on matrices) at the config's rate
    (`learning_rate_schedule`).

    differentiable: the update is differentiated through (meta-gradients by TBPTT, online
    meta-weighting). Adam's update m / (sqrt(v + eps_root) + eps) has an infinite derivative
    at v = 0 unless eps_root > 0, so a config with eps_root = 0 is refused.

    Equal configs and step counts give the same object (`program`), so that the programs built
    from it (steps, state initialisers) are compiled once.
    """
    if cfg["name"] not in ("adam", "adamw"):
        raise errors.UserError(f"optimizer.name={cfg['name']!r} is not supported; use 'adamw' "
                               f"or 'adam'")
    if differentiable and not cfg["eps_root"] > 0:
        raise errors.UserError(f"optimizer.eps_root={cfg['eps_root']} makes adam's update "
                               f"non-differentiable at zero second moments; set it > 0 (1e-8) "
                               f"for meta-gradients")
    try:
        key = ("optimizer", hashable(cfg), num_steps)
    except TypeError:  # A value with no hashable stand-in: built afresh.
        return _build_optimizer(cfg, num_steps)
    return program(key, lambda: _build_optimizer(cfg, num_steps))


def _build_optimizer(cfg: Mapping[str, Any], num_steps: int | None
                     ) -> optax.GradientTransformation:
    rate = learning_rate_schedule(cfg, num_steps)
    adam = [optax.scale_by_adam(b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"],
                                eps_root=cfg["eps_root"])]
    if cfg["name"] == "adamw":
        adam.append(optax.add_decayed_weights(cfg["weight_decay"], _decay_mask))
    # Nested as optax.adam / optax.adamw nest theirs, so checkpointed states keep their layout.
    return optax.chain(optax.clip_by_global_norm(cfg["grad_clip"]),
                       optax.chain(*adam, optax.scale_by_learning_rate(rate)))


def constant_adam(lr: float, *, b1: float = 0.9, b2: float = 0.99,
                  grad_clip: float = 1.0) -> dict[str, Any]:
    """`make_optimizer`'s config of clipped Adam at a constant rate, eps_root > 0: the inner
    optimizer of meta-training and of the token-level cells (differentiable)."""
    return {"name": "adam", "schedule": "constant", "lr": lr, "b1": b1, "b2": b2, "eps": 1e-8,
            "eps_root": 1e-8, "grad_clip": grad_clip}


def init_state(model: model_lib.Model, optimizer: optax.GradientTransformation,
               rng: jax.Array, seq_len: int) -> TrainState:
    """Fresh parameters and optimizer state. rng: a typed PRNG key."""
    init_rng, state_rng = jax.random.split(rng)
    params = model.init(init_rng, jnp.zeros((1, seq_len), jnp.int32))
    return TrainState(params=params, opt_state=optimizer.init(params),
                      step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(state_rng))


LossFn = Callable[[Any, Mapping[str, jax.Array], Any], tuple[jax.Array, dict]]


def objective_loss(model: model_lib.Model, objective: objectives.Objective) -> LossFn:
    """`loss_fn(params, batch, theta)`: the objective on the model's logits of batch['inputs'].

    When the objective reads the reference model's log-probabilities, theta is
    {'objective': its theta, 'reference': the frozen reference params} (`step_theta`).
    One function per model and objective settings (`objectives.program_key`; theta is an
    argument), so that programs jitted from it are compiled once.
    """
    key = objectives.program_key(objective)
    if key is None:
        return _objective_loss(model, objective)
    return program(("objective_loss", model, key), lambda: _objective_loss(model, objective))


def _objective_loss(model: model_lib.Model, objective: objectives.Objective) -> LossFn:

    def loss_fn(params, batch, theta):
        logits = model.apply(params, batch["inputs"]).logits  # [B, T, V]
        if objective.needs_reference:
            theta, reference = theta["objective"], theta["reference"]
            ref_logits = model.apply(reference, batch["inputs"]).logits
            ref_lp = mle.token_log_likelihood(ref_logits, batch["targets"])  # [B, T]
            batch = dict(batch, ref_log_probs=jax.lax.stop_gradient(ref_lp))
        return objective.loss(theta, logits, batch)

    return loss_fn


def step_theta(objective: objectives.Objective, reference_params: Any = None) -> Any:
    """What the train step takes as theta for `objective`: its theta, plus a copy of the
    reference params (never the state's own buffers, which the step donates) when it needs them.
    """
    if not objective.needs_reference:
        return objective.theta
    if reference_params is None:
        raise ValueError(f"objective {objective.name!r} reads a reference model; pass the "
                         f"reference params (e.g. the initial params of the run)")
    return {"objective": objective.theta, "reference": jax.tree.map(jnp.copy, reference_params)}


def next_rng(rng: jax.Array) -> jax.Array:
    """A state's rng ([2] uint32 key data) after one step."""
    return jax.random.key_data(jax.random.split(jax.random.wrap_key_data(rng))[0])


def apply_gradients(state: TrainState, grads: Any,
                    optimizer: optax.GradientTransformation) -> tuple[TrainState, dict]:
    """One optimizer update of `state` with `grads`; the rng advances once."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    norms = {"grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1,
                          rng=next_rng(state.rng)), norms


def gradients(loss_fn: LossFn, params: Any, batch: Mapping[str, jax.Array], theta: Any,
              step: jax.Array) -> tuple[Any, dict]:
    """(d loss / d params, the loss's metrics) on `batch` after `step` ([] int32) steps, which
    the loss sees as batch['step'] (step-dependent objectives such as a warm-up read it).

    The one gradient of every training step: the sharded loop's (`train_step`) and the
    in-memory inner runs' (`learned_loss.meta.lm_problem`), so both take the same arithmetic.
    """
    batch = dict(batch, step=step)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, theta)
    return grads, metrics


def train_step(state: TrainState, batch: Mapping[str, jax.Array], theta: Any, *,
               optimizer: optax.GradientTransformation, loss_fn: LossFn
               ) -> tuple[TrainState, dict]:
    """One optimizer step on `loss_fn`. batch: e.g. {'inputs': [B, T], 'targets': [B, T], ...}."""
    grads, metrics = gradients(loss_fn, state.params, batch, theta, state.step)
    state, norms = apply_gradients(state, grads, optimizer)
    return state, dict(metrics, **norms)


def eval_step(params: Any, batch: Mapping[str, jax.Array], theta: Any, *,
              loss_fn: LossFn) -> dict:
    """The loss's metrics on a batch, without an update."""
    return loss_fn(params, batch, theta)[1]


def state_shardings(state: TrainState, optimizer: optax.GradientTransformation,
                    rules: sharding.Rules, mesh: jax.sharding.Mesh) -> TrainState:
    """NamedSharding for every leaf: params by the rules, moments like their params, and the
    step, rng and every optimizer scalar replicated."""
    specs = sharding.param_specs(state.params, rules, mesh)
    opt_specs = sharding.opt_state_specs(optimizer, state.params, specs)
    return sharding.named(mesh, TrainState(params=specs, opt_state=opt_specs, step=P(), rng=P()))


def compile_steps(model: model_lib.Model, optimizer: optax.GradientTransformation,
                  objective: objectives.Objective | None, state_sh: TrainState, mesh: jax.sharding.Mesh,
                  loss_fn: LossFn | None = None):
    """The jitted train and eval steps with explicit shardings; the train step donates state.

    The loss is `objective` on the model's logits, or `loss_fn(params, batch, theta)` when given
    (e.g. a reward model's Bradley-Terry loss, or DPO). Batches are split over the batch axes.
    Returns (train(state, batch, theta) -> (state, metrics), evaluate(params, batch, theta)).
    """
    if loss_fn is None:
        loss_fn = objective_loss(model, objective)

    def build():
        batch_sh = NamedSharding(mesh, sharding.batch_spec(mesh))
        replicated = NamedSharding(mesh, P())
        train = jax.jit(
            functools.partial(train_step, optimizer=optimizer, loss_fn=loss_fn),
            in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, replicated),
            donate_argnums=(0,))
        evaluate = jax.jit(
            functools.partial(eval_step, loss_fn=loss_fn),
            in_shardings=(state_sh.params, batch_sh, None), out_shardings=replicated)
        return train, evaluate

    # The same steps for the same model, optimizer, loss function and shardings: a stage run
    # again (another cell of the same shapes) compiles nothing new.
    return program(("steps", model, optimizer, loss_fn, tree_key(state_sh), mesh), build)


def create_sharded_state(model: model_lib.Model, optimizer: optax.GradientTransformation,
                         rng: jax.Array, seq_len: int, rules: sharding.Rules,
                         mesh: jax.sharding.Mesh) -> tuple[TrainState, TrainState]:
    """Initialises the state directly into its shardings. Returns (state, shardings). The
    program is built once per model, optimizer, sequence length, rules and mesh."""
    _, state_sh = state_layout(model, optimizer, seq_len, rules, mesh)
    init = functools.partial(init_state, model, optimizer, seq_len=seq_len)
    key = _layout_key("init_state", model, optimizer, seq_len, rules, mesh)
    build = lambda: jax.jit(init, out_shardings=state_sh)
    return (build() if key is None else program(key, build))(rng), state_sh


def state_layout(model: model_lib.Model, optimizer: optax.GradientTransformation,
                 seq_len: int, rules: sharding.Rules, mesh: jax.sharding.Mesh
                 ) -> tuple[TrainState, TrainState]:
    """(the abstract state `init_state` makes: shapes and dtypes, its shardings), without
    compiling anything."""

    def build():
        abstract = jax.eval_shape(functools.partial(init_state, model, optimizer,
                                                    seq_len=seq_len), jax.random.key(0))
        return abstract, state_shardings(abstract, optimizer, rules, mesh)

    key = _layout_key("state_layout", model, optimizer, seq_len, rules, mesh)
    return build() if key is None else program(key, build)


def _layout_key(name, model, optimizer, seq_len, rules, mesh):
    try:
        return (name, model, optimizer, seq_len, hashable(rules), mesh)
    except TypeError:
        return None


def init_opt_state(optimizer: optax.GradientTransformation, params: Any,
                   shardings: Any) -> Any:
    """`optimizer.init(params)` placed as `shardings` (a state's opt_state shardings), by one
    program per optimizer and shardings."""
    init = program(("init_opt_state", optimizer, tree_key(shardings)),
                   lambda: jax.jit(optimizer.init, out_shardings=shardings))
    return init(params)
