"""Where background work runs: OS threads, or gevent greenlets for BLISS-style programs.

The choice is explicit (``Settings.concurrency``) and made when a bus connects, never at
import time. ``auto`` picks gevent when the threading module has been monkey-patched.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol


class Handle(Protocol):
    """A started background task."""

    def join(self, timeout: float | None = None) -> None: ...


class Runner(Protocol):
    """Spawns background tasks and makes the primitives they synchronise with."""

    name: str

    def spawn(self, fn: Callable[[], Any], name: str) -> Handle: ...

    def event(self) -> Any: ...

    def lock(self) -> Any: ...

    def sleep(self, seconds: float) -> None: ...


class ThreadRunner:
    """Background work in daemon OS threads."""

    name = "thread"

    def spawn(self, fn: Callable[[], Any], name: str) -> Handle:
        thread = threading.Thread(target=fn, name=name, daemon=True)
        thread.start()
        return thread

    def event(self) -> threading.Event:
        return threading.Event()

    def lock(self) -> Any:
        return threading.Lock()

    def sleep(self, seconds: float) -> None:
        import time

        time.sleep(seconds)


class GeventRunner:
    """Background work in greenlets; the program must let the hub run (gevent I/O, sleeps)."""

    name = "gevent"

    def __init__(self) -> None:
        import gevent

        self._gevent = gevent

    def spawn(self, fn: Callable[[], Any], name: str) -> Handle:
        greenlet = self._gevent.spawn(fn)
        greenlet.name = name
        return greenlet

    def event(self) -> Any:
        import gevent.event

        return gevent.event.Event()

    def lock(self) -> Any:
        import gevent.lock

        return gevent.lock.Semaphore()

    def sleep(self, seconds: float) -> None:
        self._gevent.sleep(seconds)


def gevent_patched() -> bool:
    """True if gevent has monkey-patched the threading module in this process."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("threading"))


def make_runner(concurrency: str) -> ThreadRunner | GeventRunner:
    """The runner for ``concurrency`` (``auto``, ``thread`` or ``gevent``)."""
    if concurrency == "gevent" or (concurrency == "auto" and gevent_patched()):
        try:
            return GeventRunner()
        except ImportError:
            raise ImportError(
                "concurrency='gevent' needs gevent: pip install 'databus[gevent]'"
            ) from None
    if concurrency in ("thread", "auto"):
        return ThreadRunner()
    raise ValueError(f"concurrency must be 'auto', 'thread' or 'gevent', got {concurrency!r}")
