"""Tests for learned_loss.objectives.dpo: the DPO (sigmoid), cDPO and IPO losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_loss.objectives import dpo

# Three pairs; delta = (pc - rc) - (pr - rr):
#   pair 0: (-1 + 2) - (-3 + 2) = 1 - (-1) = 2
#   pair 1: (-2 + 2) - (-1 + 1) = 0
#   pair 2: (-5 + 3) - (-1 + 3) = -2 - 2 = -4
PC = jnp.array([-1.0, -2.0, -5.0])  # [B=3]
PR = jnp.array([-3.0, -1.0, -1.0])
RC = jnp.array([-2.0, -2.0, -3.0])
RR = jnp.array([-2.0, -1.0, -3.0])


def test_sigmoid_loss_and_metrics():
    loss, metrics = jax.jit(dpo.loss, static_argnames="loss_type")(PC, PR, RC, RR, beta=0.1)
    # -log sigmoid(beta * delta) = log(1 + e^(-beta delta)):
    #   pair 0: log(1 + e^-0.2) = log(1.81873075) = 0.59813887
    #   pair 1: log 2 = 0.69314718
    #   pair 2: log(1 + e^0.4) = log(2.49182470) = 0.91301525
    #   mean = 2.20430130 / 3 = 0.73476710
    np.testing.assert_allclose(loss, 0.73476710, rtol=1e-6)
    # Implicit rewards beta (p - r): chosen [0.1, 0, -0.2], rejected [-0.1, 0, 0.2].
    np.testing.assert_allclose(metrics["reward_chosen"], -0.1 / 3, rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_rejected"], 0.1 / 3, rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_margin"], -0.2 / 3, rtol=1e-5)  # [0.2, 0, -0.4]
    np.testing.assert_allclose(metrics["accuracy"], 1.0 / 3.0, rtol=1e-6)  # only pair 0


def test_label_smoothing_cdpo():
    loss, _ = dpo.loss(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.1, label_smoothing=0.1)
    # -log sigmoid(-x) = -log sigmoid(x) + x, so at x = 0.2: 0.59813887 + 0.2 = 0.79813887.
    # 0.9 * 0.59813887 + 0.1 * 0.79813887 = 0.53832498 + 0.07981389 = 0.61813887.
    np.testing.assert_allclose(loss, 0.61813887, rtol=1e-6)


def test_ipo():
    loss, _ = dpo.loss(PC, PR, RC, RR, beta=0.1, loss_type="ipo")
    # 1 / (2 beta) = 5: (2 - 5)^2 = 9, (0 - 5)^2 = 25, (-4 - 5)^2 = 81; mean 115 / 3.
    np.testing.assert_allclose(loss, 115.0 / 3.0, rtol=1e-6)
    loss, _ = dpo.loss(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.5, loss_type="ipo")
    # 1 / (2 * 0.5) = 1: (2 - 1)^2 = 1.
    np.testing.assert_allclose(loss, 1.0, rtol=1e-6)


def test_gradient_signs():
    grads = jax.jit(jax.grad(lambda *a: dpo.loss(*a)[0], argnums=(0, 1, 2, 3)))(PC, PR, RC, RR)
    g_pc, g_pr, g_rc, g_rr = grads
    # d/d pc of -log sigmoid(beta delta) / B = -beta (1 - sigmoid(beta delta)) / B; pair 0:
    # -0.1 * (1 - 0.54983400) / 3 = -0.01500553.
    np.testing.assert_allclose(g_pc[0], -0.1 * (1 - 1 / (1 + math.exp(-0.2))) / 3, rtol=1e-5)
    # A descent step raises the chosen log-prob and lowers the rejected one.
    assert bool(jnp.all(g_pc < 0.0)) and bool(jnp.all(g_pr > 0.0))
    np.testing.assert_allclose(g_pr, -g_pc, rtol=1e-6)
    np.testing.assert_allclose(g_rc, -g_pc, rtol=1e-6)  # the reference enters with opposite sign
    np.testing.assert_allclose(g_rr, g_pc, rtol=1e-6)


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="sigmoid.*ipo"):
        dpo.loss(PC, PR, RC, RR, loss_type="hinge")
