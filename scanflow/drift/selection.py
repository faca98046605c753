"""Critical samples under a label budget: the strangest first, but diverse and class-aware.

Asking a person to label twenty copies of one kind of corrupted image wastes nineteen labels. The selection is
greedy: it starts from the highest-scoring sample and then repeatedly takes the candidate with the best mix of
its own score and its distance (in an embedding space, e.g. the classifier's hidden layer) to everything already
chosen, while no predicted class takes more than its fair share of the budget. Candidates are the detector's
critical samples; when there are fewer than the budget, the next-highest scores fill it up (and are marked as
below threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Weight of diversity against strangeness when both are scaled to [0, 1].
DEFAULT_DIVERSITY = 1.0
#: Candidates considered per budget slot: keeps the greedy search O(budget^2 * this) on large batches.
CANDIDATES_PER_SLOT = 5


@dataclass(frozen=True)
class Selection:
    """Indices into the batch, in the order to show them to a person, and how many were above threshold."""

    indices: tuple[int, ...]
    n_above_threshold: int
    budget: int


def select_critical(
    sample_scores: np.ndarray,
    critical_indices: tuple[int, ...] | list[int],
    budget: int,
    embeddings: np.ndarray | None = None,
    predicted_labels: np.ndarray | None = None,
    diversity: float = DEFAULT_DIVERSITY,
) -> Selection:
    """Choose at most `budget` samples to label from one batch (see the module docstring).

    `sample_scores`: float [N]; `critical_indices`: the detector's samples above its threshold, ranked;
    `embeddings`: float [N, D] (optional, enables diversity); `predicted_labels`: int [N] (optional, class quotas).
    """
    scores = np.asarray(sample_scores, dtype=np.float64)
    n = len(scores)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if embeddings is not None and len(embeddings) != n:
        raise ValueError(f"embeddings have {len(embeddings)} rows but there are {n} sample scores")
    if predicted_labels is not None and len(predicted_labels) != n:
        raise ValueError(f"predicted_labels have {len(predicted_labels)} entries but there are {n} sample scores")
    critical = [int(i) for i in critical_indices]
    if any(not 0 <= i < n for i in critical):
        raise ValueError(f"critical_indices must lie in [0, {n}), got {critical}")
    budget = min(budget, n)
    if budget == 0:
        return Selection((), 0, 0)

    critical_set = set(critical)
    rest = [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in critical_set]
    ranked = critical + rest
    pool = np.array(ranked[: max(budget, min(len(ranked), CANDIDATES_PER_SLOT * budget))])

    chosen = _greedy(pool, scores, budget, embeddings, predicted_labels, diversity)
    return Selection(tuple(chosen), sum(1 for i in chosen if i in critical_set), budget)


def _greedy(
    pool: np.ndarray,
    scores: np.ndarray,
    budget: int,
    embeddings: np.ndarray | None,
    labels: np.ndarray | None,
    diversity: float,
) -> list[int]:
    strangeness = _relevance(scores[pool])
    quota = _class_quota(pool, labels, budget)
    taken_per_class: dict[int, int] = {}
    if embeddings is not None:
        points = np.asarray(embeddings, dtype=np.float64)[pool]
        nearest = np.full(len(pool), np.inf)
    available = np.ones(len(pool), dtype=bool)
    chosen: list[int] = []
    while len(chosen) < budget and available.any():
        priority = strangeness.copy()
        if embeddings is not None and chosen:
            finite = nearest[available & np.isfinite(nearest)]
            scale = finite.max() if finite.size and finite.max() > 0 else 1.0
            priority = priority + diversity * np.minimum(nearest / scale, 1.0)
        allowed = available.copy()
        if labels is not None:
            full = np.array([taken_per_class.get(int(labels[i]), 0) >= quota.get(int(labels[i]), 0) for i in pool])
            if (allowed & ~full).any():
                allowed &= ~full
        pick = int(np.flatnonzero(allowed)[np.argmax(priority[allowed])])
        available[pick] = False
        chosen.append(int(pool[pick]))
        if labels is not None:
            label = int(labels[pool[pick]])
            taken_per_class[label] = taken_per_class.get(label, 0) + 1
        if embeddings is not None:
            nearest = np.minimum(nearest, np.linalg.norm(points - points[pick], axis=1))
    return chosen


def _relevance(scores: np.ndarray) -> np.ndarray:
    """Scores as a share of the largest (scores are "standard deviations above clean", so ratios mean something);
    min-max scaling instead when no score is positive."""
    top = scores.max()
    if top > 0:
        return np.clip(scores / top, 0.0, 1.0)
    span = top - scores.min()
    return (scores - scores.min()) / span if span > 0 else np.ones(len(scores))


def _class_quota(pool: np.ndarray, labels: np.ndarray | None, budget: int) -> dict[int, int]:
    """Per predicted class, at most its share of the candidates times the budget, rounded up."""
    if labels is None:
        return {}
    classes, counts = np.unique(np.asarray(labels)[pool], return_counts=True)
    return {int(c): math.ceil(budget * k / len(pool)) for c, k in zip(classes, counts)}


#: Neighbours whose mean distance defines how typical a sample is within its cluster.
TYPICALITY_NEIGHBOURS = 20
#: Members of one cluster the typicality is computed among, at most (a seeded sample beyond it): keeps the pairwise
#: distances of a large batch with a small budget to a few MB.
MAX_TYPICALITY_MEMBERS = 500


def shifted_candidates(sample_scores: np.ndarray, critical_indices: tuple[int, ...] | list[int], clean_median: float) -> np.ndarray:
    """The rows most likely to carry the batch's shift, highest score first: the critical ones, widened to the
    estimated shifted share of the batch.

    The critical samples are only those beyond a per-image threshold that ~5 % of clean images pass; under a mild
    shift (glass blur at severity 3 on Fashion-MNIST) that is 111 of 2,000 shifted images, the most extreme ones,
    and labels drawn from them teach a retrained model less than labels drawn at random. The shifted share is
    estimated from the median: a clean image scores above the clean median (`clean_median`) half the time, and a
    shifted image is assumed to always do, so share = 2 x P(score > clean median) - 1, clipped to [0, 1]
    (conservative: shifted images below the median only shrink the estimate). A clean batch gives about 0, so
    just the critical samples.
    """
    scores = np.asarray(sample_scores, dtype=np.float64)
    critical = np.asarray([int(i) for i in critical_indices], dtype=np.int64)
    share = float(np.clip(2.0 * np.mean(scores > clean_median) - 1.0, 0.0, 1.0)) if len(scores) else 0.0
    size = max(len(critical), math.ceil(share * len(scores)))
    ranked = np.argsort(-scores, kind="stable")
    return ranked[:size] if size > len(critical) else critical


def select_typical(
    sample_scores: np.ndarray,
    critical_indices: tuple[int, ...] | list[int],
    budget: int,
    embeddings: np.ndarray,
    seed: int = 0,
    clean_median: float | None = None,
) -> Selection:
    """Choose `budget` samples that together represent the drifted data: the labels a person gives them teach a
    model the most (TypiClust, Hacohen et al. 2022: at small budgets, typical beats uncertain or extreme).

    The candidates are the critical samples, or with `clean_median` (the detector's
    `clean_score_quantile(0.5)`) the wider `shifted_candidates`. They are clustered into `budget` groups in
    `embeddings` (k-means, seeded) and from each group the most typical member (smallest mean distance to its
    nearest neighbours in the group) is taken; the result is shown strangest first. With no more candidates than
    the budget this is `select_critical`. Measured on Fashion-MNIST (benchmarks/README.md): extreme samples
    (`select_critical`) taught a fine-tuned model less than a random draw; typical ones of the widened candidates
    more. Pass the classifier's hidden-layer activations (`Classifier.embed_and_predict_proba`) as `embeddings`:
    clustered in the autoencoder's latent space, which is organised by pixel appearance, the typical samples were
    behind random ones on shot noise and glass blur (3 replicates each); in the classifier's features, which are
    organised by content, they were ahead.
    """
    from sklearn.cluster import KMeans

    scores = np.asarray(sample_scores, dtype=np.float64)
    critical = np.asarray([int(i) for i in critical_indices], dtype=np.int64)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if len(embeddings) != len(scores):
        raise ValueError(f"embeddings have {len(embeddings)} rows but there are {len(scores)} sample scores")
    critical_set = {int(i) for i in critical}
    candidates = critical if clean_median is None else shifted_candidates(scores, tuple(critical), clean_median)
    if len(candidates) <= budget:
        return select_critical(scores, tuple(critical), budget, embeddings)
    points = np.asarray(embeddings, dtype=np.float64)[candidates]
    groups = KMeans(n_clusters=budget, n_init=1, random_state=seed).fit_predict(points)
    chosen = []
    rng = np.random.default_rng(seed)
    for group in range(budget):
        members = np.flatnonzero(groups == group)
        if len(members) == 0:
            continue
        if len(members) > MAX_TYPICALITY_MEMBERS:
            members = np.sort(rng.choice(members, MAX_TYPICALITY_MEMBERS, replace=False))
        k = min(TYPICALITY_NEIGHBOURS, len(members) - 1)
        if k == 0:
            chosen.append(int(candidates[members[0]]))
            continue
        distances = np.linalg.norm(points[members][:, None, :] - points[members][None, :, :], axis=2)
        spread = np.sort(distances, axis=1)[:, 1 : k + 1].mean(axis=1)
        chosen.append(int(candidates[members[np.argmin(spread)]]))
    chosen.sort(key=lambda i: -scores[i])
    return Selection(tuple(chosen), sum(1 for i in chosen if i in critical_set), budget)
