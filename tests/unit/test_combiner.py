"""The stacked categorizer's combiner: contract, missing experts, taxonomy-consistent paths, learning whom to trust."""
from __future__ import annotations

import numpy as np
import pytest

from components.models.combiner import CONDITIONS, Combiner, StackInputs, input_conditions, path_index, path_log_probs

# Two masters, three paths; "Tshirts" (article 0) sits under two parents, as in the real catalog.
PATHS = np.array([[0, 0, 0], [1, 1, 0], [0, 0, 1]])
N_CLASSES = [2, 2, 2]


def expert_probs(rng: np.random.Generator, truth: np.ndarray, accuracy: float) -> list[np.ndarray]:
    """Per level, probabilities that put most mass on the true class `accuracy` of the time."""
    out = []
    for lvl in range(3):
        y = PATHS[truth, lvl]
        right = rng.random(len(truth)) < accuracy
        guess = np.where(right, y, 1 - y)
        p = np.full((len(truth), 2), 0.1)
        p[np.arange(len(truth)), guess] = 0.9
        out.append(p)
    return out


def inputs(rng, truth, good_has_input: np.ndarray) -> StackInputs:
    """Expert 0 is good when its input is present and useless otherwise; expert 1 is mediocre always."""
    good = expert_probs(rng, truth, 0.97)
    noise = expert_probs(rng, rng.integers(0, 3, len(truth)), 1.0)
    good = [np.where(good_has_input[:, None], g, z) for g, z in zip(good, noise)]
    mediocre = expert_probs(rng, truth, 0.75)
    logp = np.stack([path_log_probs(good, PATHS), path_log_probs(mediocre, PATHS)], axis=1)
    words = np.where(good_has_input, 6, 0)
    cond = input_conditions(words, np.ones(len(truth), bool), np.ones(len(truth), bool))
    return StackInputs(logp, np.ones((len(truth), 2), np.float32), cond)


def test_contract_shapes_probabilities_and_paths():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 200)
    x = inputs(rng, truth, np.ones(200, bool))
    comb = Combiner(("good", "mediocre"), PATHS).fit(x, truth)
    marginals, best = comb.predict(x, N_CLASSES)
    assert [m.shape for m in marginals] == [(200, 2)] * 3
    for m in marginals:
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-5)
    assert {tuple(p) for p in best} <= {tuple(p) for p in PATHS}  # only paths the taxonomy holds
    assert (best == PATHS[truth]).all(1).mean() > 0.9


def test_learns_to_distrust_an_expert_whose_input_is_missing():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 1200)
    has_title = rng.random(1200) < 0.5
    x = inputs(rng, truth, has_title)
    comb = Combiner(("good", "mediocre"), PATHS, l2=1e-4).fit(x, truth)
    w = comb.weights(x.cond)  # (N, E, L)
    assert w[has_title, 0].mean() > 2 * w[~has_title, 0].mean()
    _, best = comb.predict(x, N_CLASSES)
    acc_without = (best[~has_title] == PATHS[truth[~has_title]]).all(1).mean()
    mediocre_alone = PATHS[x.logp[~has_title, 1].sum(1).argmax(1)]
    # Without its title the good expert is noise: the pool must do as well as the mediocre expert alone.
    assert acc_without >= (mediocre_alone == PATHS[truth[~has_title]]).all(1).mean() - 0.01


def test_a_masked_expert_has_no_say():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 3, 100)
    x = inputs(rng, truth, np.ones(100, bool))
    comb = Combiner(("good", "mediocre"), PATHS).fit(x, truth)
    x.mask[:, 0] = 0.0
    scrambled = StackInputs(x.logp.copy(), x.mask, x.cond)
    scrambled.logp[:, 0] = rng.normal(size=scrambled.logp[:, 0].shape)
    np.testing.assert_allclose(comb.path_probs(x), comb.path_probs(scrambled), atol=1e-6)
    x.mask[:] = 0.0  # no expert applies: the fitted prior alone, still a distribution
    np.testing.assert_allclose(comb.path_probs(x).sum(1), 1.0, atol=1e-6)


def test_round_trip_and_ablation():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, 150)
    x = inputs(rng, truth, np.ones(150, bool))
    comb = Combiner(("good", "mediocre"), PATHS, l2=1e-3, fit_bias=True, balance=0.25).fit(x, truth)
    again = Combiner.from_dict(comb.to_dict())
    np.testing.assert_allclose(comb.path_probs(x), again.path_probs(x), atol=1e-5)
    solo = comb.without("mediocre").fit(x.without(1), truth)
    assert solo.experts == ("good",) and solo.path_probs(x.without(1)).shape == (150, 3)
    bad = comb.to_dict() | {"conditions": list(CONDITIONS[:2])}
    with pytest.raises(ValueError, match="conditions"):
        Combiner.from_dict(bad)


def test_unknown_label_paths_are_skipped_not_fitted():
    labels = np.array([[0, 0, 0], [1, 0, 1], [0, 0, 1]])  # the middle one is not a taxonomy path
    assert path_index(labels, PATHS).tolist() == [0, -1, 2]


def test_expert_selection_drops_an_expert_that_validation_rewards_but_new_products_do_not():
    from components.pipeline.stack import cross_validate, select_experts

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    folds = np.arange(300) % 5
    # "leaky" is sure and right on four folds and sure and wrong on the fifth: fitted on the four, trusted,
    # it fails the held-out one, which is what cross-validation exists to see.
    leaky = expert_probs(rng, np.where(folds < 4, truth, (truth + 1) % 3), 1.0)
    experts = (expert_probs(rng, truth, 0.9), leaky, expert_probs(rng, truth, 0.8))
    logp = np.stack([path_log_probs(e, PATHS) for e in experts], axis=1)
    cond = input_conditions(np.full(300, 6), np.ones(300, bool), np.ones(300, bool))
    x = StackInputs(logp, np.ones((300, 3), np.float32), cond)
    start = Combiner(("good", "leaky", "mediocre"), PATHS, l2=1e-4, fit_bias=True)
    oof = cross_validate(x, truth, folds, lambda: start.over(start.experts))
    chosen, chosen_oof, tried = select_experts(x, truth, folds, start, oof, variants=1)
    assert "leaky" not in chosen.experts and "good" in chosen.experts
    assert tried["_".join(chosen.experts)] == max(tried.values()) > tried["good_leaky_mediocre"]
    assert chosen_oof.shape == (300, len(PATHS)) and chosen.theta.shape[0] == len(chosen.experts)


def test_an_expert_is_dropped_only_if_no_input_variant_loses():
    from components.pipeline.stack import expert_to_drop

    current = np.array([0.97, 0.90, 0.96])  # out-of-fold macro-F1 per input variant of the current pool
    # Without "text" the mean rises (by one variant's noise) but the third variant loses what text gave it:
    # kept, as the text tower must be for products without metadata.
    assert expert_to_drop({"text": np.array([0.975, 0.92, 0.945]), "image": np.array([0.96, 0.90, 0.96])},
                          current) is None
    # Of the removals that cost no variant, the one that raises the mean most; a tie with the pool is no gain.
    assert expert_to_drop({"text": np.array([0.975, 0.92, 0.945]), "image": np.array([0.97, 0.91, 0.96]),
                           "fusion": np.array([0.98, 0.91, 0.96])}, current) == "fusion"
    assert expert_to_drop({"fusion": current.copy()}, current) is None


def test_path_probabilities_match_a_float64_pool_computed_by_hand():
    # The fits contract the log-probabilities in float32 (memory-bound): the pool must still be the formula
    # of the module docstring, computed here in float64 with numpy.
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, 300)
    x = inputs(rng, truth, rng.random(300) < 0.7)
    x = StackInputs(x.logp, (rng.random((300, 2)) < 0.8).astype(np.float32), x.cond)
    comb = Combiner(("good", "mediocre"), PATHS, l2=1e-3, fit_bias=True).fit(x, truth)
    w = np.logaddexp(0.0, np.einsum("elc,nc->nel", comb.theta, x.cond.astype(np.float64)))
    w *= x.mask.astype(np.float64)[:, :, None]
    scores = np.einsum("nel,nelp->np", w, x.logp.astype(np.float64)) + comb.bias
    expected = np.exp(scores - scores.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(comb.path_probs(x), expected, atol=1e-5)


def test_a_group_of_duplicate_listings_counts_as_one_product_at_group_weight_one():
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 3, 120)
    x = inputs(rng, truth, np.ones(120, bool))
    x.group = np.arange(120)
    # Row 0 listed 40 times over (one product group), as near-duplicate listings are in the real catalog.
    dup = np.concatenate([np.zeros(39, dtype=np.int64), np.arange(120)])
    many = x.subset(dup)
    once = Combiner(("good", "mediocre"), PATHS, l2=1e-3, fit_bias=True, balance=0.25).fit(x, truth)
    grouped = Combiner(("good", "mediocre"), PATHS, l2=1e-3, fit_bias=True, balance=0.25,
                       group_weight=1.0).fit(many, truth[dup])
    counted = Combiner(("good", "mediocre"), PATHS, l2=1e-3, fit_bias=True, balance=0.25).fit(many, truth[dup])
    np.testing.assert_allclose(grouped.path_probs(x), once.path_probs(x), atol=1e-4)
    np.testing.assert_allclose(grouped.bias, once.bias, atol=1e-3)
    assert np.abs(counted.bias - once.bias).max() > 0.05  # counted 40 times, the copies move the offsets
    assert Combiner.from_dict(grouped.to_dict()).group_weight == 1.0
    assert Combiner.from_dict({k: v for k, v in once.to_dict().items() if k != "group_weight"}).group_weight == 0.0
