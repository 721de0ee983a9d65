"""Running estimates of how long a request takes to finish, for the latency objective: the
execution time per batch size, and the lag before the event loop hands a finished batch back."""

from __future__ import annotations


class ExecTimeEstimator:
    """Exponentially weighted mean per observed batch size; sizes never seen are scaled
    linearly from the nearest size that was (a batch rarely costs less per item when larger,
    so this errs on the side of caution)."""

    def __init__(self, weight: float = 0.2) -> None:
        self._weight = weight
        self._mean: dict[int, float] = {}
        self._return_lag = 0.0

    @property
    def return_lag_ns(self) -> int:
        """How long a finished batch waits for the event loop (it grows when the loop is the
        bottleneck, which execution times alone never show)."""
        return int(self._return_lag)

    def observe_return_lag(self, ns: int) -> None:
        self._return_lag += self._weight * (max(0, ns) - self._return_lag)

    def observe(self, items: int, ns: int) -> None:
        mean = self._mean.get(items)
        if mean is None:
            self._mean[items] = ns
            return
        # A single outlier (a paused process, a cold cache) moves the mean at most to 3x.
        self._mean[items] = mean + self._weight * (min(ns, 3 * mean) - mean)

    def __call__(self, items: int) -> int:
        mean = self._mean.get(items)
        if mean is not None:
            return int(mean)
        if not self._mean:
            return 0
        nearest = min(self._mean, key=lambda size: abs(size - items))
        return int(self._mean[nearest] * items / nearest)


class LatenessMargin:
    """The share of a latency objective held back as a safety margin: requests are admitted
    and batched to finish by `arrival + objective * (1 - margin)`, so that execution-time
    jitter and time the forecast cannot see leave only about `miss_rate` of them late.

    The margin is a running quantile estimate: every late finish widens it by `step`, every
    timely one narrows it by `step * miss_rate / (1 - miss_rate)`, so it settles where late
    finishes are `miss_rate` of all."""

    def __init__(self, step: float = 0.005, limit: float = 0.5, miss_rate: float = 0.0025) -> None:
        self._up = step
        self._down = step * miss_rate / (1.0 - miss_rate)
        self._limit = limit
        self.share = 0.0

    def planned(self, objective_ns: int) -> int:
        """The part of an objective the scheduler plans with."""
        return int(objective_ns * (1.0 - self.share))

    def observe(self, late: bool) -> None:
        if late:
            self.share = min(self._limit, self.share + self._up)
        else:
            self.share = max(0.0, self.share - self._down)
