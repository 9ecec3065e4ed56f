"""The hand-made robust losses (learned_loss/objectives/robust.py) against values worked by hand.

One batch, B = 1 and T = 2, vocabulary 3. Logits log(2), 0, 0 at t = 0 give p = (1/2, 1/4, 1/4)
exactly; logits 0, 0, 0 at t = 1 give p = (1/3, 1/3, 1/3). Targets y = (0, 1); the mask counts
both tokens unless a test says otherwise.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_loss import objectives
from learned_loss.core import errors
from learned_loss.objectives import mle, robust

LOGITS = jnp.asarray([[[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]]])  # [1, 2, 3]
BATCH = {"targets": jnp.asarray([[0, 1]]), "mask": jnp.asarray([[1.0, 1.0]])}
P_Y = (0.5, 1.0 / 3.0)  # p of the target at t = 0 and t = 1.
CE = [-math.log(p) for p in P_Y]


def _mean(values):
    return sum(values) / len(values)


def test_gce_is_one_minus_p_to_the_q_over_q():
    value, metrics = robust.gce_loss((), LOGITS, BATCH, q=0.5)
    # (1 - sqrt(1/2)) / 0.5 = 0.585786..., (1 - sqrt(1/3)) / 0.5 = 0.845299...
    assert float(value) == pytest.approx(_mean([0.5857864376, 0.8452994616]), rel=1e-6)
    assert float(metrics["nll"]) == pytest.approx(_mean(CE), rel=1e-6)
    assert float(metrics["loss"]) == float(value) and float(metrics["tokens"]) == 2.0
    # q = 1: the mean absolute error 1 - p_y; q -> 0: cross-entropy.
    mae, _ = robust.gce_loss((), LOGITS, BATCH, q=1.0)
    assert float(mae) == pytest.approx(_mean([1 - p for p in P_Y]), rel=1e-6)
    near_ce, _ = robust.gce_loss((), LOGITS, BATCH, q=1e-4)
    assert float(near_ce) == pytest.approx(_mean(CE), rel=1e-3)


def test_sce_adds_the_clipped_reverse_cross_entropy():
    value, _ = robust.sce_loss((), LOGITS, BATCH, alpha=0.1, beta=1.0)
    # RCE = -A (1 - p_y) with A = -4: 4 * 1/2 = 2 and 4 * 2/3 = 8/3.
    assert float(value) == pytest.approx(
        _mean([0.1 * CE[0] + 2.0, 0.1 * CE[1] + 8.0 / 3.0]), rel=1e-6)
    ce_only, _ = robust.sce_loss((), LOGITS, BATCH, alpha=1.0, beta=0.0)
    assert float(ce_only) == pytest.approx(float(mle.loss((), LOGITS, BATCH)[0]), rel=1e-6)


def test_bootstrapping_soft_and_hard():
    # Soft: beta CE + (1 - beta) H(p); H(1/2, 1/4, 1/4) = 1.5 log 2, H(uniform 3) = log 3.
    value, _ = robust.bootstrap_loss((), LOGITS, BATCH, beta=0.8, kind="soft")
    entropy = [1.5 * math.log(2.0), math.log(3.0)]
    assert float(value) == pytest.approx(
        _mean([0.8 * c + 0.2 * h for c, h in zip(CE, entropy)]), rel=1e-6)
    # Hard: the model's top class is 0 at t = 0 (the target: CE alone) and, of three tied,
    # argmax's first at t = 1 (-log 1/3 as well).
    hard, _ = robust.bootstrap_loss((), LOGITS, BATCH, beta=0.8, kind="hard")
    assert float(hard) == pytest.approx(_mean([CE[0], 0.8 * CE[1] + 0.2 * math.log(3.0)]),
                                        rel=1e-6)
    # beta = 1 is cross-entropy.
    ce, _ = robust.bootstrap_loss((), LOGITS, BATCH, beta=1.0, kind="soft")
    assert float(ce) == pytest.approx(_mean(CE), rel=1e-6)


def test_soft_bootstrap_differentiates_through_its_target():
    """At t = 0 (p = (1/2, 1/4, 1/4), y = 0): the gradient is beta (p - e_y) plus (1 - beta)
    dH/dz, with dH/dz_j = -p_j (log p_j + H) = (-1/4, 1/8, 1/8) log 2. Held fixed, the target
    would leave beta (p - e_y) alone: MLE's direction."""
    only_first = {"targets": BATCH["targets"], "mask": jnp.asarray([[1.0, 0.0]])}
    grad = jax.grad(lambda z: robust.bootstrap_loss((), z, only_first, beta=0.8,
                                                    kind="soft")[0])(LOGITS)
    p = np.asarray([0.5, 0.25, 0.25])
    d_entropy = np.asarray([-0.25, 0.125, 0.125]) * math.log(2.0)
    np.testing.assert_allclose(np.asarray(grad[0, 0]), 0.8 * (p - np.eye(3)[0]) + 0.2 * d_entropy,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad[0, 1]), 0.0)  # Not in the mask.


def test_the_mask_picks_the_tokens():
    only_first = {"targets": BATCH["targets"], "mask": jnp.asarray([[1.0, 0.0]])}
    value, metrics = robust.gce_loss((), LOGITS, only_first, q=0.5)
    assert float(value) == pytest.approx(0.5857864376, rel=1e-6)
    assert float(metrics["tokens"]) == 1.0


def test_registry_builds_them_with_their_settings_and_refuses_bad_ones():
    gce = objectives.build({"name": "gce", "q": 0.5})
    assert float(gce.loss(gce.theta, LOGITS, BATCH)[0]) == pytest.approx(
        float(robust.gce_loss((), LOGITS, BATCH, q=0.5)[0]))
    sce = objectives.build("sce")
    assert float(sce.loss(sce.theta, LOGITS, BATCH)[0]) == pytest.approx(
        float(robust.sce_loss((), LOGITS, BATCH, alpha=0.1, beta=1.0)[0]))
    boot = objectives.build({"name": "bootstrap", "bootstrap_kind": "hard"})
    assert float(boot.loss(boot.theta, LOGITS, BATCH)[0]) == pytest.approx(
        float(robust.bootstrap_loss((), LOGITS, BATCH, beta=0.95, kind="hard")[0]))
    for bad, match in (({"name": "gce", "q": 0.0}, "gce q"),
                       ({"name": "sce", "sce_alpha": 0.0, "sce_beta": 0.0}, "sce alpha"),
                       ({"name": "bootstrap", "bootstrap_beta": 1.5}, "bootstrap beta"),
                       ({"name": "bootstrap", "bootstrap_kind": "mixed"}, "bootstrap kind")):
        with pytest.raises(errors.UserError, match=match):
            objectives.build(bad)
