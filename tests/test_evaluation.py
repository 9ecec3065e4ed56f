"""Gold evaluation: per-family scores from real generations, and the KL estimate."""

import jax
import numpy as np
import pytest

from configs import models
from learned_loss.core import evaluation, sampling
from learned_loss.core import model as model_lib
from learned_loss.data import tasks

FAMILIES = ("uppercase", "first_char", "compare")


@pytest.fixture(scope="module")
def setup():
    cfg = model_lib.ModelConfig.from_config(models.model_config("nano", max_len=128))
    model = model_lib.build(cfg)
    params = model.init(jax.random.key(0), np.zeros((1, 8), np.int32))
    # Large random weights so that completions vary (the init scale gives near-uniform logits).
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(0)
    noisy = [x + 0.3 * rng.standard_normal(x.shape).astype(np.float32) for x in leaves]
    other = [x + 0.3 * rng.standard_normal(x.shape).astype(np.float32) for x in leaves]
    examples = evaluation.sample_examples(FAMILIES, per_family=5, difficulty=1, seed=0)
    return model, jax.tree.unflatten(tree, noisy), jax.tree.unflatten(tree, other), examples


def test_sample_examples_is_seeded_and_covers_families():
    a = evaluation.sample_examples(FAMILIES, per_family=3, difficulty=2, seed=1)
    b = evaluation.sample_examples(FAMILIES, per_family=3, difficulty=2, seed=1)
    c = evaluation.sample_examples(FAMILIES, per_family=3, difficulty=2, seed=2)
    assert a == b and a != c
    assert [e.family for e in a] == [f for f in FAMILIES for _ in range(3)]


def test_scores_match_the_generations(setup):
    model, params, _, examples = setup
    # A batch size that does not divide the example count exercises the filled last batch.
    answers = evaluation.generate_answers(model, params, examples, batch_size=4,
                                          max_new_tokens=12)
    result = evaluation.evaluate(model, params, examples, batch_size=4, max_new_tokens=12)
    assert result["num_examples"] == 15 and set(result["families"]) == set(FAMILIES)
    for family in FAMILIES:
        rows = [(e, a) for e, a in zip(examples, answers) if e.family == family]
        expected = np.mean([tasks.exact_match(a["text"], e.answer) for e, a in rows])
        graded = np.mean([tasks.graded_score(a["text"], e.answer) for e, a in rows])
        length = np.mean([a["length"] for _, a in rows])
        got = result["families"][family]
        assert got["exact_match"] == pytest.approx(expected)
        assert got["graded"] == pytest.approx(graded)
        assert got["length"] == pytest.approx(length)
        assert got["count"] == 5
    means = [result["families"][f]["graded"] for f in FAMILIES]
    assert result["overall"]["graded"] == pytest.approx(np.mean(means))
    # Each answer is the decoded completion before EOS, one generated row per prompt.
    block, lengths = sampling.pad_prompts([tasks.prompt_tokens(examples[0])])
    alone = sampling.generate(model, params, block, lengths, max_new_tokens=12)
    assert answers[0]["length"] == int(alone.lengths[0]) - int(alone.finished[0])


def test_kl_is_zero_against_itself_and_positive_against_another(setup):
    model, params, other, examples = setup
    kwargs = dict(batch_size=8, max_new_tokens=12, rng=jax.random.key(3))
    same = evaluation.kl_to_reference(model, params, params, examples, **kwargs)
    different = evaluation.kl_to_reference(model, params, other, examples, **kwargs)
    assert abs(same) < 1e-4
    assert different > 0.1
    result = evaluation.evaluate(model, params, examples, batch_size=8, max_new_tokens=12,
                                 reference_params=other, rng=jax.random.key(3))
    assert result["overall"]["kl_to_reference"] == pytest.approx(different, rel=1e-5)

