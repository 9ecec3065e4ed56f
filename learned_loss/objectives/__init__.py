"""Training objectives, chosen by name from the config.

Each objective is a pure function `loss(theta, logits, batch) -> (loss, metrics)`; theta holds
the objective's own parameters (empty for MLE).
"""

from learned_loss.objectives import mle

OBJECTIVES = {"mle": mle.loss}


def get(name: str):
    """The objective function registered under `name`."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]
