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
