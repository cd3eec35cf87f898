"""A thread-safe per-stage stopwatch for profiling hooks (``timings=`` / ``stages=``
arguments) of :mod:`peelscan.linescan` and :mod:`peelscan.metrics`."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


class StageClock:
    """Calls a function and adds its wall time in seconds to ``timings[stage]``; calls it
    untimed when ``timings`` is None. Safe to share between threads (their times add up)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.lock = threading.Lock()

    def __call__(self, stage: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.timings is None:
            return fn(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            with self.lock:
                self.timings[stage] = self.timings.get(stage, 0.0) + dt
