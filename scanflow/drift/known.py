"""Known shifts: one drift, one question.

Once a person has decided about a drift and the decision stands (a filter promoted, or the drift explicitly
ignored; a retrained model learned from the batch itself, so that batch is no fair sample of the shift for it), later batches carrying the same shift would otherwise be flagged and asked about again
and again: a filter cleans most of the noise, not all of it, so the champion's detector still sees the batch as
unlike clean data. A `KnownShift` keeps what the decided batch looked like to the detector of the champion that now
serves it; a new drifted batch is compared with it by a two-sample test, and only a batch that differs from every
known shift (another corruption, a heavier one) goes to a person.

The comparison uses the detector's per-image signals (component scores and pixel statistics) in clean standard
deviations (`AutoencoderDetector.shift_signature`), and the energy-distance two-sample test with permutations
(Szekely & Rizzo 2004): no distributional assumption, sensitive to any difference in the joint distribution. A
p-value above alpha means the test found no difference from the known shift; at the usual sizes (200 images each)
it tells corruptions of different families apart with a p-value near 1/(1 + permutations).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from scanflow.errors import ScanflowError

DEFAULT_PERMUTATIONS = 500
#: At most this many images of each batch enter the test (a seeded subset): the cost is quadratic in the count.
MAX_ROWS = 400


@dataclass(frozen=True)
class KnownShift:
    """A shift a person decided about. `signature`: float [N, F] from `shift_signature` of the champion
    `model_version` it applies to; `decision`: what was done (filter, retrain, ignore); `mlflow_run_id`: the
    improve run that holds the decision."""

    batch_id: str
    model_version: str
    decision: str
    mlflow_run_id: str
    signature: np.ndarray

    def __post_init__(self) -> None:
        signature = np.asarray(self.signature, dtype=np.float64)
        if signature.ndim != 2 or len(signature) < 2 or not np.all(np.isfinite(signature)):
            raise ScanflowError(
                f"a known shift needs a finite [N, F] signature with N >= 2, got shape {signature.shape}: compute it "
                "with AutoencoderDetector.shift_signature on the decided batch"
            )
        object.__setattr__(self, "signature", signature)

    def to_bytes(self) -> bytes:
        """An .npz holding the signature and the facts (what `from_bytes` reads)."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, signature=self.signature, batch_id=self.batch_id, model_version=self.model_version,
                            decision=self.decision, mlflow_run_id=self.mlflow_run_id)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "KnownShift":
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            return cls(batch_id=str(stored["batch_id"]), model_version=str(stored["model_version"]),
                       decision=str(stored["decision"]), mlflow_run_id=str(stored["mlflow_run_id"]),
                       signature=stored["signature"])


@dataclass(frozen=True)
class ShiftMatch:
    """The known shift a batch is indistinguishable from, with the test's p-value (the largest over known shifts)."""

    shift: KnownShift
    p_value: float

    def to_dict(self) -> dict[str, str | float]:
        return {"batch_id": self.shift.batch_id, "decision": self.shift.decision, "model_version": self.shift.model_version,
                "mlflow_run_id": self.shift.mlflow_run_id, "p_value": self.p_value}


def energy_test(a: np.ndarray, b: np.ndarray, permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0) -> float:
    """p-value of the energy-distance two-sample test of `a` [N, F] against `b` [M, F] (same F), by `permutations`
    random relabellings of the pooled rows: small = the two come from different distributions."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ScanflowError(f"the energy test needs two [N, F] arrays with the same F and N >= 2, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    a, b = (x[np.sort(rng.permutation(len(x))[:MAX_ROWS])] for x in (a, b))
    pooled = np.concatenate([a, b])
    distances = np.sqrt(np.maximum(np.sum((pooled[:, None, :] - pooled[None, :, :]) ** 2, axis=-1), 0.0))
    n, m = len(a), len(b)
    labels = np.zeros((permutations + 1, n + m))
    labels[0, :n] = 1.0
    for row in labels[1:]:
        row[rng.permutation(n + m)[:n]] = 1.0
    statistics = _energy_statistics(distances, labels, n, m)
    return float((1 + np.sum(statistics[1:] >= statistics[0])) / (1 + permutations))


def _energy_statistics(distances: np.ndarray, in_first: np.ndarray, n: int, m: int) -> np.ndarray:
    """The energy statistic for each row of `in_first` (1 where a pooled row belongs to the first sample)."""
    in_second = 1.0 - in_first
    weighted = in_first @ distances
    within_first = np.sum(weighted * in_first, axis=1)
    between = np.sum(weighted * in_second, axis=1)
    within_second = np.sum((in_second @ distances) * in_second, axis=1)
    return 2.0 * between / (n * m) - within_first / (n * n) - within_second / (m * m)


def closest_known_shift(
    signature: np.ndarray, known: list[KnownShift], permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0
) -> ShiftMatch | None:
    """The known shift `signature` (a drifted batch, [N, F]) is least distinguishable from (largest energy-test
    p-value), whatever that p-value; None when no known shift has the signature's width."""
    best: ShiftMatch | None = None
    for shift in known:
        if shift.signature.shape[1] != np.shape(signature)[1]:
            continue
        p_value = energy_test(signature, shift.signature, permutations, seed)
        if best is None or p_value > best.p_value:
            best = ShiftMatch(shift, p_value)
    return best


def match_known_shift(
    signature: np.ndarray, known: list[KnownShift], alpha: float, permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0
) -> ShiftMatch | None:
    """The known shift `signature` (a drifted batch, [N, F]) cannot be told apart from at level `alpha`, the one
    with the largest p-value; None when it differs from all of them (or there are none): a new drift."""
    if not 0 < alpha < 1:
        raise ScanflowError(f"alpha must be in (0, 1), got {alpha}")
    best = closest_known_shift(signature, known, permutations, seed)
    return best if best is not None and best.p_value > alpha else None


def recognise(
    signature: np.ndarray, known: list[KnownShift], alpha: float, model_version: str, seed: int = 0
) -> tuple[ShiftMatch | None, str]:
    """`match_known_shift` of a drifted batch against champion `model_version`'s `known` shifts, with the sentence a
    person reads in the log: the shift it is, or that it differs from all of them and how close the nearest came
    ("" when there are none)."""
    if not 0 < alpha < 1:
        raise ScanflowError(f"alpha must be in (0, 1), got {alpha}")
    closest = closest_known_shift(signature, known, seed=seed) if known else None
    if closest is not None and closest.p_value > alpha:
        return closest, (f"the drift is the known shift of batch {closest.shift.batch_id} (decided: {closest.shift.decision}; "
                         f"p = {closest.p_value:.3f} that they differ); no new question")
    if not known:
        return None, ""
    nearest = f" (closest: batch {closest.shift.batch_id}, p = {closest.p_value:.3f} <= alpha {alpha})" if closest else ""
    return None, f"the drift differs from all {len(known)} known shift(s) of v{model_version}{nearest}: a new question"
