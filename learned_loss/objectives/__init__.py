"""Training objectives, chosen by name from the config.

An objective's loss is a pure function `loss(theta, logits, batch) -> (loss, metrics)`; theta
holds the objective's own parameters (empty for MLE and the hand-made robust losses; the network
of a learned objective). `build(cfg)` turns the config's `objective` section (or a bare name) into an
`Objective`: the loss with its settings bound, and its theta (loaded from a meta-training
artifact for a learned objective with a `path`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple

from learned_loss.core import errors
from learned_loss.objectives import artifact, learned, loss_truncation, mle, robust

# The objectives of pre-training and fine-tuning: losses on the model's logits.
TOKEN_OBJECTIVES = ("mle", "loss_truncation", "gce", "sce", "bootstrap", "learned_token_loss")

# Settings of each objective when the config leaves them out (configs/objectives.py holds the
# same defaults as overridable fields). The robust losses' are their papers' (`robust`): GCE's
# q = 0.7, SCE's alpha = 0.1 and beta = 1.0 (CIFAR-10), soft bootstrapping's beta = 0.95.
DEFAULTS = {"path": "", "features": learned.TOKEN_FEATURES, "hidden": 32,
            "drop_fraction": 0.3, "warmup_steps": 100, "q": 0.7, "sce_alpha": 0.1,
            "sce_beta": 1.0, "bootstrap_beta": 0.95, "bootstrap_kind": "soft"}
# Settings of the learned token loss that a config names only where it departs from them
# (configs/meta_train.py's swap50_rows): one weight per token or per row, and the run length
# that the 'progress' feature divides by (objectives/learned.py). Kept out of DEFAULTS, so the
# objective sections of configs that predate them, and the hashes of their runs, stay the same.
TOKEN_LOSS_OPTIONS = {"granularity": "token", "run_steps": 0}


class Objective(NamedTuple):
    name: str
    loss: Callable[[Any, Any, Mapping[str, Any]], tuple[Any, dict]]
    theta: Any  # () when the objective has no parameters.
    # True when the loss reads batch['ref_log_probs'] (the frozen reference model's
    # log-probabilities of the targets): the train step then passes theta as
    # {'objective': theta, 'reference': reference params}.
    needs_reference: bool = False
    # True when the loss reads each training row's history in the run (learned.HISTORY_FEATURES):
    # only an in-memory inner run (learned_loss/meta/lm_problem.py) keeps it.
    needs_history: bool = False


def program_key(objective: Objective) -> tuple | None:
    """What a program of `objective`'s loss depends on besides theta (an argument of every
    program): its name, the loss function with its settings, and what it reads. Objectives
    built from equal settings (`build`) have equal keys, whatever their theta; None when a
    setting has no hashable value (the objective then keys nothing)."""
    key = (objective.name, _callable_key(objective.loss), objective.needs_reference,
           objective.needs_history)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _callable_key(fn: Callable) -> Any:
    """A function, or a functools.partial as (function, arguments, sorted keywords)."""
    if isinstance(fn, functools.partial):
        return (_callable_key(fn.func), fn.args, tuple(sorted(fn.keywords.items())))
    return fn


def build(cfg: str | Mapping[str, Any]) -> Objective:
    """The objective named by `cfg` (a name, or a section with `name` and its settings).

    Raises:
      UserError: an unknown name, or a robust loss's setting out of its range.
      artifact.ArtifactError: a learned objective's `path` holds no readable artifact.
    """
    cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg)
    name = cfg["name"]
    settings = {k: cfg.get(k, v) for k, v in DEFAULTS.items()}
    if name == "mle":
        return Objective(name, mle.loss, ())
    if name == "loss_truncation":
        fn = functools.partial(loss_truncation.loss, drop_fraction=settings["drop_fraction"],
                               warmup_steps=settings["warmup_steps"])
        return Objective(name, fn, ())
    robust_losses = {
        "gce": functools.partial(robust.gce_loss, q=settings["q"]),
        "sce": functools.partial(robust.sce_loss, alpha=settings["sce_alpha"],
                                 beta=settings["sce_beta"]),
        "bootstrap": functools.partial(robust.bootstrap_loss, beta=settings["bootstrap_beta"],
                                       kind=settings["bootstrap_kind"]),
    }
    if name in robust_losses:
        robust.check_settings(q=settings["q"], alpha=settings["sce_alpha"],
                              beta=settings["sce_beta"],
                              bootstrap_beta=settings["bootstrap_beta"],
                              kind=settings["bootstrap_kind"])
        return Objective(name, robust_losses[name], ())
    if name == "learned_token_loss":
        if settings["path"]:
            art = artifact.load(settings["path"], expected_name=name)
            theta = art.theta
            if "closed_form" in art.settings:  # A symbolic fit of a learned loss.
                form = art.settings["closed_form"]
                fn = functools.partial(learned.closed_form_loss, form=form)
                return Objective(name, fn, theta,
                                 needs_reference="ref_log_prob" in learned.CLOSED_FORMS[form])
            source = art.settings
        else:
            source = cfg
            theta = None
        options = {k: source.get(k, v) for k, v in TOKEN_LOSS_OPTIONS.items()}
        named = {k: cfg[k] for k in options if k in cfg and cfg[k] != options[k]}
        if named:  # Only with a path: the artifact's settings differ from the config's.
            raise errors.UserError(f"the objective names {named}, but the artifact at "
                                   f"{settings['path']} was meta-trained with {options}; drop "
                                   f"those fields (the artifact decides them)")
        features = learned.check_token_settings(source.get("features", settings["features"]),
                                                **options)
        if theta is None:
            theta = learned.init_token_loss(_init_key(), features, settings["hidden"])
        fn = functools.partial(learned.token_loss, features=features, **options)
        return Objective(name, fn, theta, needs_reference="ref_log_prob" in features,
                         needs_history=learned.reads_history(features))
    raise errors.UserError(f"unknown objective {name!r}; choose one of {TOKEN_OBJECTIVES}")


def _init_key():
    import jax  # Deferred: importing the registry should not initialise a backend.
    return jax.random.key(0)
