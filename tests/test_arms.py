"""Tests for learned_loss.studies.arms: the meta-training compute behind a learned arm, worked
out by hand from the configs the artifacts record."""

import ml_collections
import numpy as np

from configs import meta_train_reward, meta_train
from learned_loss import objectives
from learned_loss.objectives import artifact
from learned_loss.studies import arms


def _config(path: str, name: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.artifacts = {name: path}
    return config


def test_meta_compute_of_a_learned_reward(tmp_path):
    cfg = meta_train_reward.get_config("smoke")
    path = str(tmp_path / "reward")
    artifact.save(path, "learned_reward", {"w": np.zeros(2)}, {}, cfg.to_dict())
    got = arms.meta_compute(_config(path, "learned_reward"), str(tmp_path), "learned_reward")
    outer, members = cfg.outer.num_steps, cfg.estimator.population  # 2 steps, 2 members.
    rl = cfg.rlhf.rl
    tokens = (outer * members * cfg.inner.horizon * rl.global_batch_size * rl.samples_per_prompt
              * cfg.rlhf.preferences.seq_len)
    prompts = (outer * members * cfg.fitness.prompts_per_family
               * len(cfg.rlhf.tasks.families) * cfg.fitness.samples_per_prompt)
    assert got == {"outer_steps": outer, "tokens": tokens, "gold_scored_prompts": prompts}


def test_meta_compute_of_a_learned_token_loss(tmp_path):
    cfg = meta_train.get_config("smoke")
    cfg.estimator.name = "es"  # Antithetic: every member is two inner runs.
    path = str(tmp_path / "token")
    artifact.save(path, "learned_token_loss", {"w": np.zeros(2)}, {}, cfg.to_dict(),
                  provenance={"outer_steps": 3})
    got = arms.meta_compute(_config(path, "learned_es"), str(tmp_path), "learned_es")
    runs = 2 * cfg.estimator.population
    tokens = 3 * runs * cfg.estimator.unroll_length * cfg.inner.batch_size * cfg.data.seq_len
    assert got == {"outer_steps": 3, "tokens": tokens}


def test_the_table_of_arms_names_real_methods_and_controls():
    from configs import compare as compare_config
    from learned_loss.rlhf import training
    from learned_loss.studies import token_arms

    for arm in arms.TABLE:
        if arm.kind == "rlhf":
            assert arm.method in training.ALGORITHMS + ("dpo",), arm
        else:
            assert arm.method in token_arms.METHODS, arm
        assert set(arm.controls) <= set(arms.ARMS) - {arm.name}, arm
        assert arm.meta_trainer in ("", "online", "tbptt", "es", "pes", "preference",
                                    "reward"), arm
        assert arm.data
    assert [a.name for a in arms.TABLE if a.budget != 1] == ["mle_2x"]
    assert arms.BY_NAME["mle_2x"].budget == 2
    # The learned arms meta-trained before the grid are the ones the config meta-trains.
    assert set(arms.META_TRAINED) == {"learned_tbptt", "learned_es", "learned_pes",
                                      "learned_rows", "learned_preference", "learned_reward"}
    assert arms.META_TOKEN == ("learned_tbptt", "learned_es", "learned_pes", "learned_rows")
    for variant in compare_config.VARIANTS:
        config = compare_config.get_config(variant)
        assert set(arms.META_TRAINED) <= set(config.meta)
        # Each learned token arm is meta-trained by the estimator its row names.
        for name in arms.META_TOKEN:
            assert config.meta[name].estimator.name == arms.BY_NAME[name].meta_trainer
    # learned_pes and learned_rows see whole runs: their longest horizon is the cells' budget,
    # and learned_rows's progress counts the cells' steps, one weight per row.
    for variant in ("smoke", "swap50", "paper"):
        config = compare_config.get_config(variant)
        for name in ("learned_pes", "learned_rows"):
            assert config.meta[name].estimator.max_horizon == config.steps
        rows = config.meta.learned_rows.objective
        assert (rows.granularity, rows.run_steps) == ("row", config.steps)
        assert "progress" in rows.features
        assert objectives.build(rows).needs_history
    # Every learned arm is tested against the hand-made arm or control it should beat.
    learned = [a.name for a in arms.TABLE if a.meta_trainer]
    assert {a for a, _ in arms.PAIRINGS} == set(learned) | {"dpo"}
    assert compare_config.get_config("paper").objectives == arms.ARMS


def test_meta_compute_of_a_full_horizon_token_loss(tmp_path):
    cfg = meta_train.get_config("smoke")
    cfg.estimator.name = "full_es"  # Every member (pairs included) is one whole run.
    path = str(tmp_path / "token")
    artifact.save(path, "learned_token_loss", {"w": np.zeros(2)}, {}, cfg.to_dict(),
                  provenance={"outer_steps": 3})
    got = arms.meta_compute(_config(path, "learned_pes"), str(tmp_path), "learned_pes")
    tokens = (3 * cfg.estimator.population * cfg.estimator.max_horizon * cfg.inner.batch_size
              * cfg.data.seq_len)
    assert got == {"outer_steps": 3, "tokens": tokens}
