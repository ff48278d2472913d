"""Fits used by the studies: ordinary least squares with a confidence interval, and the
exponential-rate fitter of the T5 convergence study.

`fit_exponential_rate(t, y)` fits ln y = a - k t on the *far tail* of a decaying series
y(t) = ||theta(t) - theta*||, where the linearised map theta - theta* -> (I - eta H)(theta - theta*)
governs it (docs/science/claims.md T5):

* the series is cut `floor_margin` decades above its numerical floor (float32 rounding makes
  ||theta - theta*|| level off around 1e-8..1e-6, float64 around 1e-16..1e-14; near the stability
  edge the floor is raised by ~1 / (1 - rho));
* only the last `tail_decades` decades of decay before that cut are fitted, and never the first
  `skip_decades` decades below y(0).

Fitting the far tail matters near the stability edge eta -> 2 / lambda_max: the rate
-ln rho = -ln(eta lambda_max - 1) is small there, so an O(||theta - theta*||) nonlinear correction
to the per-step contraction shifts it by a relative amount ~ eta c ||theta - theta*|| / (-ln rho);
a window that starts 1.5 decades below y(0) (the fitter before) sees ||theta - theta*|| ~ 1e-2 and is
biased by up to ~17% there, a window at 1e-11..1e-7 (float64) by < 1e-4.

Returns the per-step rate k with a Student-t confidence interval, the per-step contraction
factor rho = exp(-k) (the quantity T5 predicts: max_i |1 - eta lambda_i|) and the window used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class LinearFit:
    slope: float
    intercept: float
    slope_low: float
    slope_high: float
    n: int
    r2: float
    confidence: float

    @property
    def slope_se(self) -> float:
        q = stats.t.ppf(0.5 + self.confidence / 2, max(self.n - 2, 1)) if self.n > 2 else math.inf
        return (self.slope_high - self.slope) / q if math.isfinite(q) else math.nan


def linear_fit(x, y, confidence: float = 0.95) -> LinearFit:
    """OLS y = intercept + slope x with a two-sided Student-t CI on the slope (needs n >= 2;
    n = 2 gives an infinite interval)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.size
    if n < 2:
        raise ValueError(f"linear_fit needs at least 2 points, got {n}")
    xm, ym = x.mean(), y.mean()
    sxx = float(np.sum((x - xm) ** 2))
    if sxx == 0:
        raise ValueError("linear_fit: all x values are equal")
    slope = float(np.sum((x - xm) * (y - ym)) / sxx)
    intercept = float(ym - slope * xm)
    resid = y - (intercept + slope * x)
    sst = float(np.sum((y - ym) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / sst if sst > 0 else 1.0
    if n > 2:
        se = math.sqrt(float(np.sum(resid**2)) / (n - 2) / sxx)
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 2)) * se
    else:
        half = math.inf
    return LinearFit(slope, intercept, slope - half, slope + half, n, r2, confidence)


@dataclass(frozen=True)
class RateFit:
    """Exponential decay y ~ A exp(-rate * t) fitted on a tail window.

    rate is per unit of t (per step when t is in steps); rate_low / rate_high bound it at the
    given confidence; contraction = exp(-rate) is the per-step factor. `ok` is False when the
    window held fewer than `min_points` points (then the numbers are NaN) and `reason` says why.
    """

    rate: float
    rate_low: float
    rate_high: float
    contraction: float
    n: int
    r2: float
    t_start: float
    t_end: float
    floor: float
    ok: bool
    reason: str = ""

    def contains(self, rate: float) -> bool:
        return bool(self.ok and self.rate_low <= rate <= self.rate_high)


def _failed(reason: str, floor: float = math.nan) -> RateFit:
    nan = math.nan
    return RateFit(nan, nan, nan, nan, 0, nan, nan, nan, floor, False, reason)


def fit_exponential_rate(
    t,
    y,
    *,
    floor: float | None = None,
    skip_decades: float = 1.5,
    floor_margin: float = 2.0,
    tail_decades: float | None = 4.0,
    min_points: int = 5,
    confidence: float = 0.95,
) -> RateFit:
    """Fit the exponential rate of a decaying positive series on its far tail (log-linear OLS).

    ln y(t) = a - k t is fitted on the points between the end of the usable decay (the first point
    below floor * 10^floor_margin, or the end of the series) and `tail_decades` decades above the
    lowest value reached there, never earlier than `skip_decades` decades below y(0).

    Args:
        t: times (e.g. logged steps), increasing.
        y: positive values (e.g. ||theta(t) - theta*||); non-finite or non-positive entries end
            the usable series.
        floor: the level where y stops decaying (numerical floor); 0 for none. None estimates it
            as the larger of `estimate_floor` (the largest of the last 10% when the series has
            levelled off) and the smallest value reached.
        skip_decades: the window starts once y has fallen this many decades below y[0].
        floor_margin: the window ends before y comes within this many decades of the floor.
        tail_decades: the window spans at most this many decades of decay, counted up from its
            lowest point (the far tail); None fits everything between the transient and the floor.
        min_points: fewer points in the window -> `ok=False`.
        confidence: level of the Student-t interval on the rate.
    """
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError("t and y must be 1-D arrays of the same length")
    bad = ~(np.isfinite(y) & (y > 0))
    if bad.any():
        stop = int(np.argmax(bad))
        if stop < min_points:
            return _failed("series not finite / positive")
        t, y = t[:stop], y[:stop]
    logy = np.log(y)
    if floor is None:
        # a series still creeping toward its floor at the end looks "decaying": the smallest value
        # reached is then the safe stand-in for the floor
        floor = max(estimate_floor(t, logy), float(np.exp(logy.min())))
    upper = logy[0] - skip_decades * math.log(10.0)
    lower = math.log(floor) + floor_margin * math.log(10.0) if floor > 0 else -math.inf
    if not upper > lower:
        return _failed("decay too short: the transient reaches the floor", floor)
    inside = (logy <= upper) & (logy >= lower)
    if not inside.any():
        return _failed("no point between the transient and the floor", floor)
    start = int(np.argmax(inside))
    below = np.nonzero(logy[start:] < lower)[0]
    end = start + (int(below[0]) if below.size else len(logy) - start)
    if tail_decades is not None:
        # the far tail: the last `tail_decades` decades of the stretch [start, end)
        top = float(np.min(logy[start:end])) + tail_decades * math.log(10.0)
        far = np.nonzero(logy[start:end] <= top)[0]
        start += int(far[0])
    idx = np.arange(start, end)
    idx = idx[inside[idx]]
    if idx.size < min_points:
        return _failed(f"only {idx.size} point(s) in the tail window (need {min_points})", floor)
    fit = linear_fit(t[idx], logy[idx], confidence)
    rate = -fit.slope
    return RateFit(
        rate=rate,
        rate_low=-fit.slope_high,
        rate_high=-fit.slope_low,
        contraction=math.exp(-rate),
        n=int(idx.size),
        r2=fit.r2,
        t_start=float(t[idx[0]]),
        t_end=float(t[idx[-1]]),
        floor=floor,
        ok=True,
    )


def estimate_floor(t, logy) -> float:
    """Level where a decaying series stopped decaying, or 0 if it was still decaying at the end.

    The series counts as levelled when the log-slope of its last 10% is below a tenth of its
    average log-slope from the start to its minimum (pure exponential decay: equal slopes; a
    noise or bias floor: slope ~ 0). The floor is then the largest value of that last 10%, which
    is robust to a noisy floor."""
    t = np.asarray(t, dtype=np.float64)
    logy = np.asarray(logy, dtype=np.float64)
    n = logy.size
    tail = slice(n - max(5, n // 10), n)
    if n < 10:
        return 0.0
    imin = int(np.argmin(logy))
    if imin == 0:
        return 0.0
    overall = (logy[0] - logy[imin]) / (t[imin] - t[0])
    tail_slope = linear_fit(t[tail], logy[tail]).slope
    levelled = overall > 0 and -tail_slope < 0.1 * overall
    return float(np.exp(np.max(logy[tail]))) if levelled else 0.0


def steps_to_threshold(t, y, threshold: float) -> float:
    """First t with y <= threshold (NaN if never)."""
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    hit = np.nonzero(np.isfinite(y) & (y <= threshold))[0]
    return float(t[hit[0]]) if hit.size else math.nan
