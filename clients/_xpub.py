"""An XPUB socket that sends multipart messages to 0MQ subscribers, and says what slow or
absent subscribers did not get (bluesky's wire and the frames bridge's PUB mode).

``bind``: the socket listens at the address and subscribers connect to it. ``connect``: it
connects to a proxy's input port (a bluesky ``Proxy``). With ``idle="wait"`` the socket waits
for a subscription before it sends anything (and again whenever every subscriber has left),
so nothing is published into the void; with ``idle="skip"`` a message nobody subscribes to
is not sent and is counted in ``unheard`` (a live view that must not lag behind).

Slow subscribers (``XPUB_NODROP`` is set): with ``on_slow="lag"`` a message that some
subscriber's queue (``hwm`` messages, plus its receive queue and the kernel's buffers) has
no room for waits until it has: the sender lags behind (the bus holds the data), and one
slow subscriber slows every subscriber of this socket. With ``on_slow="drop"`` the message
goes at once to the subscribers with room and is lost for those whose queue is full at that
moment (counted in ``dropped``, logged at most every few seconds).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import zmq

log = logging.getLogger(__name__)

#: How long ``close()`` lets queued messages reach their subscribers (ms).
LINGER_MS = 10_000
_DROP_LOG_S = 5.0


def zmq_address(address: str) -> str:
    """``host:port`` as bluesky takes it (``tcp://`` added), anything else as given."""
    return address if "://" in address else f"tcp://{address}"


class PublishSocket:
    """An XPUB socket bound (``bind``) or connected (``connect``) at an address. ValueError
    for a bad address, ``on_slow``, ``idle`` or ``hwm``."""

    def __init__(
        self,
        *,
        bind: str | None = None,
        connect: str | None = None,
        on_slow: str = "lag",
        idle: str = "wait",
        hwm: int = 1000,
    ) -> None:
        if (bind is None) == (connect is None):
            raise ValueError("give exactly one of bind= (for subscribers) or connect= (a proxy)")
        if on_slow not in ("lag", "drop"):
            raise ValueError(f"on_slow must be 'lag' or 'drop', not {on_slow!r}")
        if idle not in ("wait", "skip"):
            raise ValueError(f"idle must be 'wait' or 'skip', not {idle!r}")
        if isinstance(hwm, bool) or not isinstance(hwm, int) or hwm < 1:
            raise ValueError(f"hwm must be a number of messages >= 1, not {hwm!r}")
        self.drop = on_slow == "drop"
        self.wait_idle = idle == "wait"
        self.hwm = hwm
        self.dropped = 0  #: messages some slow subscriber did not get (``on_slow="drop"``)
        self.unheard = 0  #: messages not sent: nobody subscribed (``idle="skip"``)
        self._dropped_logged = 0
        self._drop_logged_at = 0.0
        self._topics: set[bytes] = set()
        self._stopped = threading.Event()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, LINGER_MS)
        where = zmq_address(bind if bind is not None else connect)  # type: ignore[arg-type]
        try:
            if bind is not None:
                self._socket.bind(where)
            else:
                self._socket.connect(where)
        except zmq.ZMQError as exc:
            self._socket.close(0)
            self._context.term()
            verb = "bind to" if bind is not None else "connect to"
            raise ValueError(
                f"cannot {verb} {where!r} ({exc}); give an address such as "
                f"tcp://127.0.0.1:5578 (tcp://127.0.0.1:* picks a free port)"
            ) from None
        last = self._socket.getsockopt(zmq.LAST_ENDPOINT)
        self.address: str = last.decode() if isinstance(last, bytes) and last else where

    def _read_subscriptions(self, timeout_ms: int) -> None:
        """Take the (un)subscriptions that arrived, waiting up to ``timeout_ms`` for one."""
        if timeout_ms and not self._socket.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                message = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self._topics.add(message[1:])
            elif message[:1] == b"\x00":
                self._topics.discard(message[1:])

    def send(self, parts: Sequence[bytes | memoryview]) -> bool:
        """Send one message of ``parts``; waits for a subscriber (``idle="wait"``) and for
        room (``on_slow="lag"``). False if it was not sent: ``stop()`` came first, or
        nobody subscribes (``idle="skip"``, counted in ``unheard``)."""
        if not self.wait_idle:
            self._read_subscriptions(0)  # notice subscribers that left
        while not self._topics:
            if self._stopped.is_set():
                return False
            if not self.wait_idle:
                self.unheard += 1
                return False
            self._read_subscriptions(100)
        pause = 0.00005
        while True:
            try:
                self._socket.send_multipart(parts, zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                pass
            if self.drop:
                self._send_lossy(parts)
                return True
            if self._stopped.is_set():
                return False
            self._read_subscriptions(0)
            time.sleep(pause)
            pause = min(pause * 2, 0.005)

    def _send_lossy(self, parts: Sequence[bytes | memoryview]) -> None:
        """Send ``parts`` to the subscribers with room; count it lost for the others."""
        self._socket.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            self._socket.send_multipart(parts, zmq.NOBLOCK, copy=False)
        finally:
            self._socket.setsockopt(zmq.XPUB_NODROP, 1)
        self.dropped += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= _DROP_LOG_S:
            log.warning(
                "a slow subscriber lost %d messages (%d in all): its queue was full",
                self.dropped - self._dropped_logged,
                self.dropped,
            )
            self._dropped_logged, self._drop_logged_at = self.dropped, now

    def stop(self) -> None:
        """Make a ``send()`` that waits give up (from any thread)."""
        self._stopped.set()

    def close(self) -> None:
        """Close the socket once its queued messages are out (at most ``LINGER_MS``); again
        does nothing."""
        if self._socket.closed:
            return
        if self.dropped > self._dropped_logged:
            log.warning("a slow subscriber lost %d messages in all", self.dropped)
        self._socket.close()
        self._context.term()
