"""The headroom map (experiments/headroom.py): how far MLE on noisy demonstrations falls below
MLE on the same inputs' gold answers (`mle_clean`), one axis at a time around the
noisy-demonstration grid's setting (learned_loss/studies/headroom.py).

  python -m experiments.headroom --config=configs/headroom.py:tiny --workdir=/tmp/headroom

The base point is configs/noisy_demonstrations.py's (`tiny`: nano from scratch, the four
evaluation families, 500 examples a family, 800 steps of 32 rows, 30% swapped answers). Each
value of each axis changes that one setting:
  rho       the fraction of training answers swapped for another input's answer
  epochs    passes over the training rows (the steps follow: epochs x train rows / batch)
  model     the model size (configs/models.py), trained from scratch
  examples  examples a family (the steps stay those of the base point)
`corner` combines several axes' values in one extra point (empty: none), for the most promising
corner once the axes are measured. `max_cell_seconds` bounds the regime `choice` picks: the
point with the largest headroom among those whose cells took at most that long.

Variants: `smoke` (tests: two points, two seeds, a few steps), `tiny` (5 seeds).
"""

import ml_collections

from configs import models
from configs import noisy_demonstrations as noisy
from learned_loss.studies import headroom

VARIANTS = {
    "smoke": dict(axes={"rho": (0.5,)}, seeds=2),
    # The corner: the two settings whose axes gave the largest headroom and the highest
    # mle_clean (swapped answers at 50%, 30 epochs).
    "tiny": dict(axes={"rho": (0.2, 0.4, 0.5), "epochs": (1, 3, 10, 30), "model": ("mini", "tiny"),
                       "examples": (100, 250)}, seeds=5, corner={"rho": 0.5, "epochs": 30}),
}
NOISE = "swap"  # The one noise kind of every point: swapped answers at rate `rho`.


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r} of configs/headroom.py; choose one of "
                         f"{sorted(VARIANTS)}")
    v = VARIANTS[arg]
    config = noisy.get_config(arg)
    config.variant = arg
    config.methods = ("mle", "mle_clean")
    config.seeds = v["seeds"]
    config.noises = {NOISE: dict(kinds=("other_answer",), rho=0.3)}
    config.noise_order = (NOISE,)
    config.transfer.noises = ()
    config.axes = ml_collections.ConfigDict(v["axes"])
    # The model configs the `model` axis names (the base point's is `model`).
    config.models = {name: models.model_config(name, max_len=config.data.seq_len)
                     for name in ("nano", "mini", "tiny")}
    # Several axes' values at once (--config.corner.epochs=30 --config.corner.rho=0.4); an axis
    # left at its unset value (rho -1, epochs 0, model '', examples 0) keeps the base's
    # setting; all unset: no corner point.
    config.corner = ml_collections.ConfigDict(dict(headroom.UNSET, **v.get("corner", {})))
    config.max_cell_seconds = 300.0
    return config
