"""Critical-sample selection under a label budget: strangest first, diverse, class-aware, validated."""

from __future__ import annotations

import numpy as np
import pytest

from scanflow.drift.selection import select_critical


def test_respects_the_budget_and_starts_with_the_strangest():
    scores = np.array([0.1, 5.0, 3.0, 4.0, 0.2])
    selection = select_critical(scores, critical_indices=(1, 3, 2), budget=2)
    assert selection.indices[0] == 1 and len(selection.indices) == 2
    assert selection.n_above_threshold == 2


def test_fills_the_budget_below_threshold_when_few_samples_are_critical():
    scores = np.array([0.1, 5.0, 0.3, 0.2])
    selection = select_critical(scores, critical_indices=(1,), budget=3)
    assert selection.indices == (1, 2, 3) and selection.n_above_threshold == 1


def test_prefers_diverse_samples_over_near_copies():
    rng = np.random.default_rng(0)
    copies = rng.normal(0.0, 0.01, size=(20, 4))
    others = rng.normal(0.0, 1.0, size=(5, 4)) + 10 * np.eye(5, 4)
    embeddings = np.vstack([copies, others])
    scores = np.r_[np.full(20, 10.0), np.full(5, 9.0)]
    critical = tuple(np.argsort(-scores, kind="stable"))
    chosen = select_critical(scores, critical, budget=6, embeddings=embeddings).indices
    assert sum(i < 20 for i in chosen) <= 2, "near-identical samples should not crowd out the others"
    without_diversity = select_critical(scores, critical, budget=6).indices
    assert all(i < 20 for i in without_diversity)


def test_caps_each_predicted_class_at_its_share():
    scores = np.linspace(10, 1, 30)
    labels = np.r_[np.zeros(24, dtype=int), np.ones(6, dtype=int)]
    chosen = select_critical(scores, tuple(range(30)), budget=10, predicted_labels=labels).indices
    assert sum(labels[i] == 1 for i in chosen) >= 2
    assert sum(labels[i] == 0 for i in chosen) <= 8


def test_is_deterministic_and_validates_inputs():
    scores = np.random.default_rng(1).normal(size=50)
    critical = tuple(np.argsort(-scores)[:10])
    embeddings = np.random.default_rng(2).normal(size=(50, 3))
    assert select_critical(scores, critical, 5, embeddings) == select_critical(scores, critical, 5, embeddings)
    with pytest.raises(ValueError, match="budget must be >= 0"):
        select_critical(scores, critical, -1)
    with pytest.raises(ValueError, match="embeddings have 3 rows but there are 50 sample scores"):
        select_critical(scores, critical, 5, embeddings[:3])
    with pytest.raises(ValueError, match=r"critical_indices must lie in \[0, 50\)"):
        select_critical(scores, (99,), 5)
    assert select_critical(scores, critical, 0).indices == ()


def test_typical_selection_takes_one_representative_per_group_and_shows_the_strangest_first():
    from scanflow.drift.selection import select_typical

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    embeddings = np.concatenate([c + rng.normal(0, 0.5, (30, 2)) for c in centres])
    embeddings[5] = [4.0, 4.0]  # an outlier: extreme, not typical
    scores = rng.random(90) + 1.0
    scores[5] = 10.0
    selection = select_typical(scores, tuple(range(90)), 3, embeddings)
    groups = {int(np.argmin(np.linalg.norm(centres - embeddings[i], axis=1))) for i in selection.indices}
    assert len(selection.indices) == 3 and groups == {0, 1, 2} and 5 not in selection.indices
    assert [scores[i] for i in selection.indices] == sorted((scores[i] for i in selection.indices), reverse=True)
    assert selection == select_typical(scores, tuple(range(90)), 3, embeddings)
    top_two = np.argsort(-scores)[:2]
    few = select_typical(scores, tuple(int(i) for i in top_two), 4, embeddings)
    assert set(top_two) <= set(few.indices) and len(few.indices) == 4 and few.n_above_threshold == 2
    with pytest.raises(ValueError, match="embeddings have 3 rows but there are 90 sample scores"):
        select_typical(scores, (1,), 1, embeddings[:3])


def test_a_mild_shift_widens_the_candidates_from_the_extreme_few_to_the_shifted_share():
    """Glass blur on Fashion-MNIST: 111 of 2,000 shifted images were critical, and typical labels drawn from those
    extremes taught less than random ones; the candidates now cover the estimated shifted share."""
    from scanflow.drift.selection import select_typical, shifted_candidates

    rng = np.random.default_rng(1)
    clean_median = 0.0
    shifted = rng.normal(1.0, 0.5, 160)  # mild: most above the clean median, few beyond the critical threshold
    clean = rng.normal(0.0, 1.0, 40)
    scores = np.concatenate([shifted, clean])
    critical = tuple(int(i) for i in np.argsort(-scores)[:10])
    candidates = shifted_candidates(scores, critical, clean_median)
    share = 2 * np.mean(scores > clean_median) - 1
    assert len(candidates) == int(np.ceil(share * 200)) and 120 < len(candidates) <= 160
    assert set(critical) <= set(candidates.tolist())
    assert np.mean(candidates < 160) > 0.9  # nearly all of them are the shifted rows

    clean_batch = rng.normal(0.0, 1.0, 200)
    clean_critical = tuple(int(i) for i in np.flatnonzero(clean_batch > 1.645))
    assert len(shifted_candidates(clean_batch, clean_critical, clean_median)) <= 0.2 * 200

    embeddings = rng.normal(0, 1, (200, 4))
    widened = select_typical(scores, critical, 20, embeddings, clean_median=clean_median)
    assert len(widened.indices) == 20 and widened.n_above_threshold == len(set(widened.indices) & set(critical)) < 20
    assert np.mean(np.asarray(widened.indices) < 160) >= 0.9
