"""Champion/challenger promotion: a new version replaces the champion only if the evidence says so.

The rule, in order: the challenger may lose at most `margin` accuracy on the clean holdout (what the champion was
trained for); on a labelled shifted holdout an exact one-sided McNemar test on the same images must find it better
(promoted) or worse (rejected); failing a decision on labels, a filter may be judged without labels by the champion's
drift statistic of the filtered batch against the raw one, unless the labels it has point against it (the champion
alone right more often than the filter: rejected). Anything else is "not enough labels", with how many more
would decide, never a promotion or a rejection on noise. Every verdict names the evidence that decided and shows its
numbers at the precision the rule compares them.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from scanflow.errors import ScanflowError

#: Clean-holdout accuracy a challenger may lose and still be promoted (fraction, 0.005 = half a point).
DEFAULT_PROMOTION_MARGIN = 0.005
#: Significance of the one-sided paired test on the shifted holdout.
DEFAULT_PROMOTION_ALPHA = 0.05
#: Share of the raw batch's excess statistic over the threshold a filter must remove to count as removing the shift
#: (calibrated against true accuracy gains: docs/decisions/0001-judging-a-filter-without-labels.md).
DRIFT_REDUCTION = 0.3
#: Possible `PromotionVerdict.outcome` values.
OUTCOMES = ("promoted", "rejected", "not enough labels")

_EXACT_TAIL_LIMIT = 2000  # discordant pairs up to which binomial tails are summed exactly in integers
_OPS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, "<=": operator.le}


@dataclass(frozen=True)
class HoldoutScores:
    """Accuracy (fraction 0..1) of one model on the clean and the shifted holdout, and their sizes.

    `shifted_correct`: per shifted-holdout image, in an order shared by champion and challenger, whether this model
    was right (the paired test needs it); empty when unknown. Raises ValueError when it is neither empty nor
    `n_shifted` long.
    """

    clean_accuracy: float
    shifted_accuracy: float | None
    n_clean: int
    n_shifted: int
    shifted_correct: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "shifted_correct", tuple(bool(c) for c in self.shifted_correct))
        if len(self.shifted_correct) not in (0, self.n_shifted):
            raise ValueError(f"shifted_correct has {len(self.shifted_correct)} entries but n_shifted is {self.n_shifted}")


@dataclass(frozen=True)
class PairedTest:
    """Exact one-sided McNemar test of two models on the same `n` holdout images.

    `challenger_only`/`champion_only` count the discordant images (right by that model alone). `p_better` =
    P[Bin(b+c, 1/2) >= b], the chance of a lead this large if the challenger is not better; `p_worse` the same for the
    champion's lead. Both are 1.0 when no image is discordant.
    """

    n: int
    challenger_only: int
    champion_only: int
    p_better: float
    p_worse: float


@dataclass(frozen=True)
class DriftEvidence:
    """The champion's drift detector on the raw batch and on the batch as the challenger's classifier sees it.

    Statistics and threshold are in the detector's own units. A filter removes the shift when the raw batch is over
    the threshold and the filtered statistic keeps at most `1 - DRIFT_REDUCTION` of the raw excess over it.
    """

    raw_statistic: float
    filtered_statistic: float
    threshold: float

    @property
    def allowed_statistic(self) -> float:
        """Largest filtered statistic that still counts as removing the shift."""
        return self.threshold + (1 - DRIFT_REDUCTION) * (self.raw_statistic - self.threshold)

    @property
    def removes_shift(self) -> bool:
        return self.raw_statistic > self.threshold and self.filtered_statistic <= self.allowed_statistic


@dataclass(frozen=True)
class PromotionVerdict:
    """Whether to promote, why (with the numbers), and what decided.

    `outcome` is one of OUTCOMES; `evidence` one of "labels", "drift statistic", "clean accuracy", "none".
    `p_value` is the paired test's `p_better` when one ran. `more_labels_needed`: extra labelled samples to ask a
    person for (holdout images divided by the holdout share, rounded up), set only when the outcome is
    "not enough labels" and some number of labels could decide.
    """

    promote: bool
    reason: str
    margin: float
    outcome: str = "rejected"
    evidence: str = "none"
    p_value: float | None = None
    more_labels_needed: int | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _upper_tail(k: int, m: int) -> float:
    """P[Bin(m, 1/2) >= k]: exact integer sum up to `_EXACT_TAIL_LIMIT` trials, scipy's survival function beyond."""
    if k <= 0:
        return 1.0
    if k > m:
        return 0.0
    if m > _EXACT_TAIL_LIMIT:
        from scipy.stats import binom

        return float(binom.sf(k - 1, m, 0.5))
    return sum(math.comb(m, i) for i in range(k, m + 1)) / 2**m


def paired_test(champion_correct: Sequence[bool], challenger_correct: Sequence[bool]) -> PairedTest:
    """Exact one-sided McNemar test on per-image correctness of two models on the same images, in the same order.

    Raises ValueError when the two sequences differ in length (they would not be the same images).
    """
    if len(champion_correct) != len(challenger_correct):
        raise ValueError(f"a paired test needs the same holdout images: {len(champion_correct)} champion results, "
                         f"{len(challenger_correct)} challenger results")
    pairs = list(zip(map(bool, champion_correct), map(bool, challenger_correct)))
    b = sum(1 for old, new in pairs if new and not old)
    c = sum(1 for old, new in pairs if old and not new)
    return PairedTest(len(pairs), b, c, _upper_tail(b, b + c), _upper_tail(c, b + c))


def _p_better_at(test: PairedTest, total: int) -> float:
    """`p_better` on `total` images at the observed rates: challenger-only counts floored, champion-only ceiled."""
    b = test.challenger_only * total // test.n
    c = -(-test.champion_only * total // test.n)
    return _upper_tail(b, b + c)


def more_labels_needed(test: PairedTest, alpha: float = DEFAULT_PROMOTION_ALPHA) -> int | None:
    """Extra holdout images for `p_better <= alpha` if the observed discordance rates hold.

    Both discordant counts are scaled to a larger total (the challenger's lead rounded down, the champion's up, so the
    estimate never promises a decision early); the answer is the smallest such total found by doubling and bisection,
    minus `test.n`. 0 when already decided; None when the challenger is not ahead (b <= c), since no number of labels
    at these rates would promote it. Raises ValueError for `alpha` outside (0, 1).
    """
    _check_alpha(alpha)
    if test.p_better <= alpha:
        return 0
    if test.challenger_only <= test.champion_only:
        return None
    low, high = test.n, 2 * test.n
    while _p_better_at(test, high) > alpha:
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _p_better_at(test, middle) <= alpha else (middle, high)
    return high - test.n


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"promotion alpha must be a probability in (0, 1), got {alpha}")


def _digits(x: float, least: int) -> int:
    """Decimals (at least `least`) that show a configured value such as a margin or alpha without rounding it."""
    digits = least
    while digits < 12 and abs(float(f"{x:.{digits}f}") - x) > 1e-12:
        digits += 1
    return digits


def _shown(x: float, op: str, y: float, x_digits: int, y_digits: int, y_configured: bool = True) -> tuple[str, str]:
    """`x` and `y` formatted with more decimals than asked where needed, so that the shown `x op y` still holds; a
    configured `y` (a margin, alpha) is shown with every decimal it has, a measured one from `y_digits` on."""
    y_digits = _digits(y, y_digits) if y_configured else y_digits
    for extra in range(14):
        sx, sy = f"{x:.{x_digits + extra}f}", f"{y:.{y_digits + extra}f}"
        if _OPS[op](float(sx), float(sy)):
            return sx, sy
    return repr(x), repr(y)


def _clean_note(champion: HoldoutScores, challenger: HoldoutScores, margin: float) -> str:
    return (f"clean accuracy {champion.clean_accuracy:.4f} -> {challenger.clean_accuracy:.4f} on {challenger.n_clean} "
            f"images, within the margin {margin:.{_digits(margin, 4)}f}")


def _labels_note(test: PairedTest, p: float, alpha: float) -> str:
    op = "<=" if p <= alpha else ">"
    sp, sa = _shown(p, op, alpha, 3, 2)
    if p < 0.001:
        sp = f"{p:.1e}"
    return (f"on {test.n} labelled holdout images the challenger alone was right on {test.challenger_only} and the "
            f"champion alone on {test.champion_only} (paired exact test p = {sp} {op} alpha {sa})")


def _drift_verdict(drift: DriftEvidence, clean: str, labels: str, margin: float, p: float | None) -> PromotionVerdict:
    raw, threshold = _shown(drift.raw_statistic, ">" if drift.raw_statistic > drift.threshold else "<=",
                            drift.threshold, 2, 2, y_configured=False)
    if drift.raw_statistic <= drift.threshold:
        reason = f"the filter has no drift to remove: the raw batch's statistic {raw} is not over the threshold {threshold}"
        return PromotionVerdict(False, reason + labels, margin, "rejected", "drift statistic", p)
    op = "<=" if drift.removes_shift else ">"
    filtered, allowed = _shown(drift.filtered_statistic, op, drift.allowed_statistic, 2, 2, y_configured=False)
    bound = f"a filter must bring it to at most {allowed}, the threshold plus {1 - DRIFT_REDUCTION:.0%} of the raw excess"
    if not drift.removes_shift:
        reason = f"the filter leaves the drift: statistic {raw} -> {filtered}, threshold {threshold} ({bound})"
        return PromotionVerdict(False, reason + labels, margin, "rejected", "drift statistic", p)
    reason = f"the filter removes the drift: statistic {raw} -> {filtered}, threshold {threshold} ({bound}); {clean}"
    return PromotionVerdict(True, reason + labels, margin, "promoted", "drift statistic", p)


def _extra_labels(holdout_images: int, holdout_share: float) -> int:
    """Labelled samples to ask for so that `holdout_images` of them land in the holdout (float noise tolerated)."""
    return math.ceil(holdout_images / holdout_share - 1e-9)


def _not_enough(test: PairedTest, alpha: float, margin: float, holdout_share: float) -> PromotionVerdict:
    labels = _labels_note(test, test.p_better, alpha)
    extra = more_labels_needed(test, alpha)
    if extra is None:
        reason = f"not enough labels: the challenger is not ahead on the labelled holdout, the champion is kept: {labels}"
        return PromotionVerdict(False, reason, margin, "not enough labels", "labels", test.p_better)
    asked = _extra_labels(extra, holdout_share)
    samples = "sample" if asked == 1 else "samples"
    reason = f"not enough labels to decide: {labels}; about {asked} more labelled {samples} would decide if these rates hold"
    return PromotionVerdict(False, reason, margin, "not enough labels", "labels", test.p_better, asked)


def _no_labels(champion: HoldoutScores, challenger: HoldoutScores, alpha: float, margin: float,
               holdout_share: float) -> PromotionVerdict:
    if champion.shifted_accuracy is not None and challenger.shifted_accuracy is not None and challenger.n_shifted:
        reason = (f"not enough labels: the shifted holdout scores ({champion.shifted_accuracy:.4f} -> "
                  f"{challenger.shifted_accuracy:.4f} on {challenger.n_shifted} images) carry no per-image results, "
                  f"so no paired test can decide")
        return PromotionVerdict(False, reason, margin, "not enough labels", "none")
    least = next(k for k in range(1, 64) if 0.5**k <= alpha)  # all-discordant pairs that reach alpha
    asked = _extra_labels(least, holdout_share)
    reason = ("not enough labels: no labelled holdout to judge the challenger on; "
              f"label the critical samples (at least {asked})")
    return PromotionVerdict(False, reason, margin, "not enough labels", "none", None, asked)


class InvalidMarginError(ScanflowError, ValueError):
    """A promotion margin outside [0, 1)."""


def check_promotion_margin(margin: float) -> float:
    """`margin` when it is a fraction in [0, 1); checked before any work starts (an improve run trains for minutes)."""
    if not 0 <= margin < 1:
        raise InvalidMarginError(f"promotion margin must be a fraction in [0, 1), got {margin}: e.g. 0.005 lets a "
                                 "challenger lose half a point of clean accuracy")
    return margin


def decide(champion: HoldoutScores, challenger: HoldoutScores, margin: float = DEFAULT_PROMOTION_MARGIN,
           alpha: float = DEFAULT_PROMOTION_ALPHA, drift: DriftEvidence | None = None,
           holdout_share: float = 1.0) -> PromotionVerdict:
    """Promote `challenger` over `champion`, reject it, or say that labels are missing (see the module docstring).

    `margin`: clean accuracy (fraction) the challenger may lose. `alpha`: one-sided significance of the paired test.
    `drift`: the champion's detector on the raw and the filtered batch, for a filter. `holdout_share`: fraction of a
    person's labels that land in the shifted holdout, to turn missing holdout images into labels to ask for. Raises
    ValueError for a margin outside [0, 1), an alpha outside (0, 1) or a holdout share outside (0, 1].
    """
    check_promotion_margin(margin)
    _check_alpha(alpha)
    if not 0 < holdout_share <= 1:
        raise ValueError(f"holdout share must be a fraction in (0, 1], got {holdout_share}")
    loss = champion.clean_accuracy - challenger.clean_accuracy
    if loss > margin + 1e-12:
        shown_loss, shown_margin = _shown(loss, ">", margin, 4, 4)
        reason = (f"the challenger loses {shown_loss} clean accuracy ({round(loss * challenger.n_clean)} of "
                  f"{challenger.n_clean} images), more than the margin {shown_margin}")
        return PromotionVerdict(False, reason, margin, "rejected", "clean accuracy")
    clean = _clean_note(champion, challenger, margin)
    test = None
    if champion.n_shifted and challenger.n_shifted and champion.shifted_correct and challenger.shifted_correct:
        test = paired_test(champion.shifted_correct, challenger.shifted_correct)
        if test.p_better <= alpha:
            reason = f"the challenger is better on the labelled holdout: {_labels_note(test, test.p_better, alpha)}; {clean}"
            return PromotionVerdict(True, reason, margin, "promoted", "labels", test.p_better)
        if test.p_worse <= alpha:
            worse = _labels_note(test, test.p_worse, alpha)
            return PromotionVerdict(False, f"the challenger is worse on the labelled holdout: {worse}", margin,
                                    "rejected", "labels", test.p_better)
    if drift is not None:
        if test is not None and test.champion_only > test.challenger_only:
            against = _labels_note(test, test.p_better, alpha)
            reason = (f"the person's labels point against the filter, though not significantly: {against}; the drift "
                      "statistic promotes a filter only when the labels do not")
            return PromotionVerdict(False, reason, margin, "rejected", "labels", test.p_better)
        labels = f"; the labels were undecided: {_labels_note(test, test.p_better, alpha)}" if test else ""
        return _drift_verdict(drift, clean, labels, margin, test.p_better if test else None)
    if test is not None:
        return _not_enough(test, alpha, margin, holdout_share)
    return _no_labels(champion, challenger, alpha, margin, holdout_share)
