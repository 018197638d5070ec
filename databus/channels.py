"""Shared channels: one value shared by every process on the bus (BLISS' ``Channel``).

    stop = Channel("stop_alignment", default_value=False)    # analysis process
    stop.value = True                                        # everybody sees it within ms

The value lives in a hash (``keys.shared``), so a process that starts later reads it and it
outlives every holder (it expires ``retention_ttl`` after its last write). A write runs one
Lua script that bumps a version, stores the value and publishes ``<version> <value>``:
the server's order decides which write is last, never client clocks, and a holder applies
a message only if its version is newer than what it has. One listener per bus (a thread,
or a greenlet under gevent) receives the messages, updates every holder's local copy and
calls its callbacks; after (re)subscribing it reads the values again, so nothing published
while it was not listening is missed, across a server restart too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._encoding import pack_meta, text, unpack_meta
from ._errors import ReadTimeout, ServerUnavailable
from ._store import commands, keys
from ._store.wire import Outage

if TYPE_CHECKING:
    from ._bus import Bus

log = logging.getLogger(__name__)

#: How often the listener looks at new subscriptions while no message comes (seconds).
_POLL_S = 0.05
_NOTHING = object()


class Channel:
    """A value shared by every process on the bus, under ``name``.

    value: set it now, for everybody (a write).
    default_value: set it only if nobody ever did (or it expired).
    callback: called with the new value on every change, in the listener's thread or
        greenlet; kept until ``unregister_callback``. Its errors are logged.
    timeout: seconds to wait for the subscription and first read (``ReadTimeout``).
    bus: the bus (default: ``databus.default_bus()``).

    ``.value`` reads the local copy (no round trip); assigning it writes and announces.
    Values are msgpack data: numbers, strings, bools, None, lists, dicts, numpy scalars
    and small arrays; anything else is a ``MetadataError`` (a ``TypeError``).
    """

    def __init__(
        self,
        name: str,
        value: Any = _NOTHING,
        default_value: Any = _NOTHING,
        callback: Callable[[Any], Any] | None = None,
        timeout: float = 3.0,
        bus: Bus | None = None,
    ) -> None:
        keys.check_name("channel", name, keys.MAX_CHANNEL_NAME)
        if bus is None:
            from ._bus import default_bus

            bus = default_bus()
        self.name = name
        self.bus = bus
        self._default = None if default_value is _NOTHING else default_value
        self._timeout = timeout
        self.key = keys.shared(bus.settings.prefix, name)
        self._value: Any = None
        self._version = 0
        self._callbacks: list[Callable[[Any], Any]] = []
        if callback is not None:
            self._callbacks.append(callback)
        packed_value = None if value is _NOTHING else pack_meta(value, what=f"channel {name!r}")
        packed_default = (
            None
            if default_value is _NOTHING
            else pack_meta(default_value, what=f"channel {name!r}")
        )
        _hub(bus).attach(self, timeout)
        if packed_value is not None:
            self._write(packed_value, only_if_absent=False)
        elif packed_default is not None and self._version == 0:
            self._write(packed_default, only_if_absent=True)

    def __repr__(self) -> str:
        return f"<Channel {self.name!r} value={self._value!r} version={self._version}>"

    @property
    def value(self) -> Any:
        """The local copy of the shared value (None if it was never set)."""
        return self._value

    @value.setter
    def value(self, new: Any) -> None:
        self._write(pack_meta(new, what=f"channel {self.name!r}"), only_if_absent=False)

    @property
    def default_value(self) -> Any:
        """The ``default_value`` this holder was made with (None if none)."""
        return self._default

    @property
    def timeout(self) -> float:
        """Seconds this holder waited at most for its subscription and first read."""
        return self._timeout

    def register_callback(self, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(value)`` on every change until unregistered."""
        if callback not in self._callbacks:
            self._callbacks.append(callback)

    def unregister_callback(self, callback: Callable[[Any], Any]) -> None:
        """Stop calling ``callback``."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def close(self) -> None:
        """Stop following the shared value (the value itself stays on the bus)."""
        _hub(self.bus).detach(self)

    def _write(self, packed: bytes, *, only_if_absent: bool) -> None:
        ttl = self.bus.settings.retention_ttl
        write = commands.write_shared(self.key, packed, ttl, only_if_absent=only_if_absent)
        version, stored = self.bus.wire.call(*write)
        self._apply(int(version), stored, notify=True)

    def _apply(self, version: int, packed: bytes, *, notify: bool) -> None:
        """Take ``packed`` as the value if ``version`` is newer than the local one."""
        if version <= self._version:
            return
        try:
            value = unpack_meta(packed)
        except Exception as exc:
            log.error("shared channel %r: ignored an undecodable value (%s)", self.name, exc)
            return
        self._version, self._value = version, value
        if notify:
            for callback in list(self._callbacks):
                try:
                    callback(value)
                except Exception:
                    log.exception("shared channel %r: callback %r failed", self.name, callback)


class _Hub:
    """The pub/sub listener of one bus: subscribes the topics of every ``Channel`` held
    in the process and routes their messages."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._holders: dict[str, list[Channel]] = {}
        self._pending: set[str] = set()
        self._ready: dict[str, Any] = {}
        self._lock = bus.runner.lock()
        self._subscriber = bus.wire.subscriber()
        self._outage = Outage("shared channels", revive=bus.revive_server, sleep=bus.runner.sleep)
        self._closed = False
        self._task = bus.runner.spawn(self._run, "databus-channels")

    def close(self) -> None:
        """Stop listening (the bus is closing)."""
        self._closed = True
        self._task.join(1.0)
        self._subscriber.close()

    def attach(self, channel: Channel, timeout: float) -> None:
        """Follow ``channel``'s topic; return once subscribed and its value read."""
        with self._lock:
            holders = self._holders.setdefault(channel.key, [])
            holders.append(channel)
            ready = self._ready.get(channel.key)
            if ready is None and len(holders) == 1:  # the first holder subscribes
                ready = self._ready[channel.key] = self.bus.runner.event()
                self._pending.add(channel.key)
        if ready is None:  # subscribed already: read the value for this holder
            self._read([channel.key])
        elif not ready.wait(timeout):
            raise ReadTimeout(f"shared channel {channel.name!r}: not subscribed within {timeout} s")

    def detach(self, channel: Channel) -> None:
        with self._lock:
            holders = self._holders.get(channel.key, [])
            if channel in holders:
                holders.remove(channel)

    def _read(self, topics: list[str], *, restarted: bool = False) -> None:
        """Read the stored values of ``topics`` and hand them to their holders.
        ``restarted``: the server may be a new one whose versions start again at 1, so
        its values replace the local copies whatever their versions."""
        stored = self.bus.wire.run([commands.read_shared(topic) for topic in topics])
        for topic, (version, packed) in zip(topics, stored, strict=True):
            if version is not None and packed is not None:
                self._deliver(topic, int(version), packed, restarted=restarted)
            elif restarted:  # the server lost the value: its next write is version 1 again
                with self._lock:
                    for channel in self._holders.get(topic, ()):
                        channel._version = 0

    def _deliver(self, topic: str, version: int, packed: bytes, *, restarted: bool = False) -> None:
        with self._lock:
            holders = list(self._holders.get(topic, ()))
        for channel in holders:
            if restarted and channel._version >= version:
                channel._version = version - 1
            channel._apply(version, packed, notify=True)

    def _subscribe_pending(self) -> None:
        with self._lock:
            topics = sorted(self._pending)
            self._pending.clear()
        if topics:
            self._subscriber.subscribe(*topics)

    def _run(self) -> None:
        while not self._closed:
            try:
                self._subscribe_pending()
                message = self._subscriber.message(_POLL_S)
                if self._outage.since is not None:
                    with self._lock:
                        topics = list(self._holders)
                    self._read(topics, restarted=True)
                    self._outage.over()
            except ServerUnavailable as exc:
                self._outage.wait(exc)
                continue
            except Exception:
                log.exception("shared channels: listener error")
                self.bus.runner.sleep(0.1)
                continue
            if message is not None:
                self._handle(*message)

    def _handle(self, kind: str, topic: str, data: Any) -> None:
        """One pub/sub message: a subscription done (read the value, wake the holder
        waiting for it) or a value published."""
        if kind == "subscribe":
            self._read([topic])
            with self._lock:
                ready = self._ready.pop(topic, None)
            if ready is not None:
                ready.set()
        elif kind == "message":
            version, _, packed = data.partition(b" ")
            try:
                self._deliver(topic, int(version), packed)
            except ValueError:
                log.error(
                    "shared channels: ignored a malformed message on %s: %r", topic, data[:80]
                )


def shared_names(bus: Bus) -> list[str]:
    """The names of the shared channels that hold a value on ``bus``, sorted."""
    prefix = bus.settings.prefix
    names: set[str] = set()
    for node in bus.wire.nodes():  # each shard of a cluster holds some of them
        cursor = 0
        while True:
            cursor, found = bus.wire.on_node(node, *commands.shared_keys(prefix, cursor))
            names.update(keys.shared_name(prefix, text(key)) for key in found)
            if int(cursor) == 0:
                break
    return sorted(names)


def _hub(bus: Bus) -> _Hub:
    """The bus's channel listener, started on first use, closed with the bus."""
    return bus.attachment("shared channels", lambda: _Hub(bus))
