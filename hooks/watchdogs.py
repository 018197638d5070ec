"""Ready-made watchdog hooks: attach one with ``scan.set_watchdog_callback(hook)``.

Each stops its scan cleanly (end reason ``stopped``, data kept and sealed) by raising
StopIteration, except ``AbortOnSilence``, which aborts (``aborted``) because a scan that
delivers nothing is broken, not finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from databus.channels import Channel
from databus.scan import WatchdogCallback


class StopOnChannel(WatchdogCallback):
    """Stop when the shared channel ``name`` holds ``stop_value``: the online-analysis
    loop (an analysis process sets the flag, this hook reads its local copy after each
    point, no round trip). ``reset_to`` is written when the hook is made, so an old flag
    does not stop the new scan (None leaves the channel as it is)."""

    def __init__(
        self,
        name: str,
        stop_value: Any = True,
        reset_to: Any = False,
        watchdog_timeout: float = 1.0,
        bus: Any = None,
    ) -> None:
        super().__init__(watchdog_timeout)
        kwargs: dict[str, Any] = {"bus": bus}
        if reset_to is not None:
            kwargs["value"] = reset_to
        self.channel = Channel(name, **kwargs)
        self.stop_value = stop_value

    def on_scan_data(
        self, data_events: dict[str, Any], nodes: dict[str, Any], scan_info: dict[str, Any]
    ) -> None:
        if self.channel.value == self.stop_value:
            raise StopIteration


class StopOnThreshold(WatchdogCallback):
    """Stop when channel ``channel`` (e.g. ``simulation:diode``) goes above ``above`` or
    below ``below`` (give one or both)."""

    def __init__(
        self,
        channel: str,
        above: float | None = None,
        below: float | None = None,
        watchdog_timeout: float = 1.0,
    ) -> None:
        if above is None and below is None:
            raise ValueError("StopOnThreshold needs above=, below= or both")
        super().__init__(watchdog_timeout)
        self.channel, self.above, self.below = channel, above, below

    def on_scan_data(
        self, data_events: dict[str, Any], nodes: dict[str, Any], scan_info: dict[str, Any]
    ) -> None:
        value = _value(data_events, self.channel)
        if (self.above is not None and value > self.above) or (
            self.below is not None and value < self.below
        ):
            raise StopIteration


class StopOutsideWindow(StopOnThreshold):
    """Stop when channel ``channel`` leaves the window [``low``, ``high``]."""

    def __init__(
        self, channel: str, low: float, high: float, watchdog_timeout: float = 1.0
    ) -> None:
        if low > high:
            raise ValueError(f"StopOutsideWindow needs low <= high, got [{low}, {high}]")
        super().__init__(channel, above=high, below=low, watchdog_timeout=watchdog_timeout)


class AbortOnSilence(WatchdogCallback):
    """Abort the scan when no point arrives for ``seconds`` (a stuck detector or motor)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(watchdog_timeout=seconds)

    def on_timeout(self) -> None:
        raise TimeoutError(f"no data for {self.watchdog_timeout:g} s: the scan looks stuck")


class StopAfterFailures(WatchdogCallback):
    """Stop once ``count`` points have failed ``check(data_events)`` (a callable that
    returns True for a good point); ``consecutive`` counts only failures in a row."""

    def __init__(
        self,
        check: Callable[[dict[str, Any]], bool],
        count: int,
        consecutive: bool = False,
        watchdog_timeout: float = 1.0,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count!r}")
        super().__init__(watchdog_timeout)
        self.check, self.count, self.consecutive = check, count, consecutive
        self.failures = 0

    def on_scan_data(
        self, data_events: dict[str, Any], nodes: dict[str, Any], scan_info: dict[str, Any]
    ) -> None:
        if self.check(data_events):
            if self.consecutive:
                self.failures = 0
            return
        self.failures += 1
        if self.failures >= self.count:
            raise StopIteration


def _value(data_events: dict[str, Any], channel: str) -> Any:
    try:
        return data_events[channel]
    except KeyError:
        raise KeyError(
            f"this scan has no channel {channel!r}; it has {', '.join(sorted(data_events))}"
        ) from None
