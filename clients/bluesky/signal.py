"""An ophyd ``Signal`` whose value is a shared channel, for bluesky suspenders and plans.

    RE.install_suspender(SuspendBoolHigh(ChannelSignal("beam_lost")))

Any process that sets the shared channel (``databus.channels.Channel``) changes the signal,
and ``put()``/``set()`` set the channel for every process. The signal's subscribers
(``SUB_VALUE`` callbacks, called with ``old_value``, ``value``, ``timestamp``) run in order
in one delivery task per bus (a thread, or a greenlet under gevent): never in the channel
listener, whose delay would hold back every shared channel of the process, and never in
the RunEngine's loop. bluesky's suspenders expect exactly that: like an EPICS monitor's,
their callback comes from another thread and hands the suspension to the loop itself
(``call_soon_threadsafe``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from ophyd import Signal
from ophyd.signal import UNSET_VALUE
from ophyd.utils import ReadOnlyError

from databus.channels import Channel

if TYPE_CHECKING:
    from databus import Bus

log = logging.getLogger(__name__)


class ChannelSignal(Signal):  # type: ignore[misc]  # ophyd is untyped
    """An ophyd signal named ``name`` backed by the shared channel of that name.

    default_value: written only if the channel was never set (or expired); None leaves
        the channel as it is, and a channel nobody set reads as None.
    bus: the bus (default: ``databus.default_bus()``).
    signal_kwargs: passed to ``ophyd.Signal`` (``kind``, ``dtype``, ``shape``,
        ``tolerance``, ``labels``...); its ``value`` comes from the channel.

    ``get()`` reads the local copy (no round trip). ``put(value)`` writes the channel
    and returns once the server stored it; ``set(value)`` does the same and returns a
    Status finished then. Timestamps are when this process saw the change. A value the
    channel cannot hold (not msgpack data) raises ``databus.MetadataError`` from put().
    """

    def __init__(
        self,
        name: str,
        *,
        default_value: Any = None,
        bus: Bus | None = None,
        **signal_kwargs: Any,
    ) -> None:
        super().__init__(name=name, value=UNSET_VALUE, **signal_kwargs)
        self._changes_lock = threading.Lock()
        self._deliveries: _Deliveries | None = None  # None until the first value is in
        defaults = {} if default_value is None else {"default_value": default_value}
        self._channel = Channel(name, callback=self._changed, bus=bus, **defaults)
        with self._changes_lock:
            self._readback = self._channel.value
            # caches the first value, so a subscriber made with run=True (a suspender's
            # install) sees it at once
            self._run_subs(
                sub_type=self.SUB_VALUE,
                old_value=None,
                value=self._readback,
                timestamp=self.timestamp,
            )
            self._deliveries = _deliveries(self._channel.bus)

    @property
    def source_name(self) -> str:
        """Where the value comes from: ``databus:shared:<channel name>``."""
        return f"databus:shared:{self._channel.name}"

    @property
    def channel(self) -> Channel:
        """The shared channel behind this signal."""
        return self._channel

    def put(self, value: Any, *, force: bool = False, **kwargs: Any) -> None:
        """Write ``value`` to the shared channel, for every process; returns once the
        server stored it. ``force`` skips the write-access and value checks; the other
        keywords of ``ophyd.Signal.put`` (``timestamp``, ``metadata``...) are ignored:
        the timestamp is when the change reached this process."""
        if not force:
            if not self.write_access:
                raise ReadOnlyError(f"ChannelSignal {self.name!r} does not allow write access")
            self.check_value(value)
        self._channel.value = value

    def _set_and_wait(self, value: Any, timeout: float | None, **kwargs: Any) -> None:
        """``set()``'s work: the write is done once the server stored it (msgpack may give
        back a list for a tuple, so the readback is not compared with ``value``)."""
        self.put(value)

    def describe(self) -> dict[str, dict[str, Any]]:
        """The data key of ``read()``: ophyd's, its ``source`` the shared channel, with
        ``dtype_numpy`` for numbers and ``boolean`` for a bool (ophyd says ``integer``)."""
        if self._readback is None and not self._value_dtype_str:
            raise ValueError(
                f"ChannelSignal {self.name!r}: the shared channel holds no value yet, so "
                "its dtype and shape are unknown: give ChannelSignal(..., default_value=...) "
                "or dtype= and shape=, or set the channel first"
            )
        keys = dict(super().describe())
        key = keys[self.name]
        numpy_dtype = np.asarray(self._readback).dtype
        if "dtype_numpy" not in key and numpy_dtype.kind in "biufc":
            key["dtype_numpy"] = numpy_dtype.str
        if numpy_dtype.kind == "b" and key["dtype"] == "integer":
            key["dtype"] = "boolean"
        return keys

    def destroy(self) -> None:
        """Stop following the shared channel (its value stays on the bus) and clear the
        subscriptions."""
        self._channel.unregister_callback(self._changed)
        self._channel.close()
        super().destroy()

    def _changed(self, value: Any) -> None:
        """The channel's callback (the listener's task, or the writer's): take the value,
        hand the subscribers' calls to the delivery task."""
        now = time.time()
        with self._changes_lock:
            old_value, self._readback = self._readback, value
            self._metadata["timestamp"] = now
            if self._deliveries is not None:
                self._deliveries.put(
                    partial(
                        self._run_subs,
                        sub_type=self.SUB_VALUE,
                        old_value=old_value,
                        value=value,
                        timestamp=now,
                    )
                )


class _Deliveries:
    """The task that runs the ChannelSignal subscribers of one bus, one call after the
    other in the order the changes came."""

    def __init__(self, bus: Bus) -> None:
        self._calls: deque[Callable[[], Any]] = deque()
        self._wake = bus.runner.event()
        self._closed = False
        self._task = bus.runner.spawn(self._run, "databus-signal-callbacks")

    def put(self, call: Callable[[], Any]) -> None:
        """Run ``call`` after the calls already handed over."""
        self._calls.append(call)
        self._wake.set()

    def close(self) -> None:
        """Stop (the bus is closing); calls not yet run are dropped."""
        self._closed = True
        self._wake.set()
        self._task.join(1.0)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            while self._calls and not self._closed:
                call = self._calls.popleft()
                try:
                    call()
                except Exception:
                    log.exception("ChannelSignal: a subscriber call failed")


def _deliveries(bus: Bus) -> _Deliveries:
    """The bus's delivery task, started on first use, closed with the bus."""
    return bus.attachment("bluesky signal callbacks", lambda: _Deliveries(bus))
