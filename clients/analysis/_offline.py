"""``databus run --replay FILE``: an analysis over a capture, offline. The capture's scans
are published again (a databus capture, or a dranspose ``.cbors`` dump) into a session of
a private embedded server (none to set up; the user's own embedded server is not
touched) or of the bus ``--url`` names, the workers and the reducer run on them exactly as
they do live, and the command ends once the reducer has finished every replayed scan.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import databus


@contextlib.contextmanager
def private_bus() -> Iterator[databus.Bus]:
    """A bus on an embedded server of its own, in a temporary directory: started here,
    stopped and removed on the way out (errors and Ctrl-C included). Settings come from
    the ``DATABUS_*`` variables (the memory cap too), except ``DATABUS_URL``."""
    with tempfile.TemporaryDirectory(prefix="databus-replay-") as tmp:
        settings = databus.Settings.from_env(run_dir=Path(tmp)).replace(url=None)
        bus = databus.connect(settings=settings)
        try:
            yield bus
        finally:
            bus.close()
            if bus.server is not None:
                bus.server.stop()


def publish(bus: databus.Bus, path: Path, session: str, speed: float | None) -> list[int]:
    """Publish the scans of the capture at ``path`` as new scans of ``session`` (a
    dranspose dump, or databus' own capture format); their numbers."""
    from databus.clients.capture.dranspose import is_cbors, replay_cbors

    if is_cbors(path):
        return replay_cbors(bus, path, session, speed=speed)
    from databus.clients.capture.replay import replay

    return replay(bus, path, session, speed=speed)


class Completion:
    """Which replayed scans the reducer has finished; ``done`` is set once every scan
    ``expect`` named is (``finished`` is the reducer's ``on_finish``)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reduced: set[int] = set()
        self._expected: set[int] | None = None
        self._lock = threading.Lock()

    def finished(self, key: str, reduction: Any) -> None:
        with self._lock:
            self.reduced.add(reduction.node.number)
            self._check()

    def expect(self, numbers: list[int]) -> None:
        with self._lock:
            self._expected = set(numbers)
            self._check()

    def _check(self) -> None:
        if self._expected is not None and self._expected <= self.reduced:
            self.done.set()


def with_points(bus: databus.Bus, session: str, numbers: list[int], channel: str) -> list[int]:
    """The scans of ``numbers`` whose ``channel`` has points (the others give the reducer
    nothing to finish: each is reported); ValueError if none has."""
    kept: list[int] = []
    seen: set[str] = set()
    for number in numbers:
        _, found = bus.find_scans(session=session, number=number)
        node = bus.scan(found[-1])
        seen.update(node.channels)
        if channel not in node.channels:
            print(f"databus run: scan {node.key} has no channel {channel!r}: skipped", flush=True)
        elif len(node.channels[channel]) == 0:
            print(f"databus run: scan {node.key} has no point in {channel!r}: skipped", flush=True)
        else:
            kept.append(number)
    if numbers and not kept:
        raise ValueError(
            f"none of the {len(numbers)} replayed scans has points in channel {channel!r} "
            f"(their channels: {', '.join(sorted(seen)) or 'none'}); name one with --channels"
        )
    return kept
