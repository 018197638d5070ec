"""The pace of a replay: ``--speed`` read and checked once, and the wait that keeps the
captured timing (both replays: databus captures and dranspose dumps)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def check_speed(speed: object) -> float | None:
    """``speed`` if it is a factor > 0 of the captured pace or None (as fast as possible);
    ValueError otherwise."""
    if speed is None:
        return None
    if (
        isinstance(speed, bool)
        or not isinstance(speed, (int, float))
        or not speed > 0
        or math.isinf(speed)
    ):
        raise ValueError(f"speed is a factor > 0 (1: as captured) or None (max), not {speed!r}")
    return float(speed)


def parse_speed(text: str) -> float | None:
    """A ``--speed`` option: ``max`` (None) or a factor > 0 (``1``: as captured, ``10``...);
    ValueError naming the text otherwise."""
    if text == "max":
        return None
    try:
        return check_speed(float(text))
    except ValueError:
        raise ValueError(
            f"--speed is 'max' or a factor > 0 (1: as captured), not {text!r}"
        ) from None


class Pace:
    """Waits so that records go out ``speed`` times as fast as they were captured (None:
    no wait). ``clock`` and ``sleep`` are injectable (tests control time; a replay that
    can be stopped sleeps on its stop event's ``wait``)."""

    def __init__(
        self,
        speed: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.speed, self.clock, self.sleep = check_speed(speed), clock, sleep
        self.start: tuple[float, float] | None = None  # (captured, clock) at the first record

    def wait(self, captured_at: float | None) -> None:
        """Return when the record captured at ``captured_at`` (seconds) is due; at once for
        the first record, a record without a time, or speed None."""
        if self.speed is None or captured_at is None:
            return
        if self.start is None:
            self.start = (captured_at, self.clock())
            return
        delay = self.start[1] + (captured_at - self.start[0]) / self.speed - self.clock()
        if delay > 0:
            self.sleep(delay)
