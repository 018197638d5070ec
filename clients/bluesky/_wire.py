"""bluesky's 0MQ wire, sending side: one frame ``prefix b" " name b" " payload`` per
document, what ``bluesky.callbacks.zmq.Publisher`` sends, on an XPUB socket.

``bind``: the socket listens at the address and an unmodified ``RemoteDispatcher(address)``
connects to it directly. ``connect``: it connects to a bluesky ``Proxy``'s input port (the
proxy's own PUB side drops for its slow subscribers, as it always does). Either way the
socket waits for a subscription before it sends anything (and again whenever every
subscriber has left, or the proxy went away), so nothing is published into the void. A
dispatcher that subscribes later gets the documents from then on (the middle of a run,
without its start: start the dispatchers first, or restart the bridge, which sends every
running scan again from its start).

Slow subscribers (``XPUB_NODROP`` is set): with ``on_slow="lag"`` a document that some
subscriber's queue (``hwm`` messages, plus its receive queue and the kernel's buffers) has
no room for waits until it has: the bridge lags behind the bus, which holds the data, and
one slow subscriber slows every subscriber of this bridge. With ``on_slow="drop"`` the
document goes at once to the subscribers with room and is lost for those whose queue is full
at that moment (counted in ``dropped``, logged at most every few seconds).
"""

from __future__ import annotations

import logging
import threading
import time

import zmq

log = logging.getLogger(__name__)

#: How long ``close()`` lets queued frames reach their subscribers (ms).
LINGER_MS = 10_000
_DROP_LOG_S = 5.0


def _address(address: str) -> str:
    """``host:port`` as bluesky takes it (``tcp://`` added), anything else as given."""
    return address if "://" in address else f"tcp://{address}"


class DocumentSocket:
    """An XPUB socket bound (``bind``) or connected (``connect``) at an address, sending
    bluesky frames. ValueError for a bad address, a bad prefix, ``on_slow`` or ``hwm``."""

    def __init__(
        self,
        *,
        bind: str | None = None,
        connect: str | None = None,
        prefix: bytes = b"",
        on_slow: str = "lag",
        hwm: int = 1000,
    ) -> None:
        if (bind is None) == (connect is None):
            raise ValueError("give exactly one of bind= (for dispatchers) or connect= (a proxy)")
        if not isinstance(prefix, bytes) or b" " in prefix:
            raise ValueError(f"prefix must be bytes without a space, got {prefix!r}")
        if on_slow not in ("lag", "drop"):
            raise ValueError(f"on_slow must be 'lag' or 'drop', not {on_slow!r}")
        if not isinstance(hwm, int) or hwm < 1:
            raise ValueError(f"hwm must be a number of documents >= 1, not {hwm!r}")
        self.prefix = prefix
        self.drop = on_slow == "drop"
        self.dropped = 0
        self._dropped_logged = 0
        self._drop_logged_at = 0.0
        self._topics: set[bytes] = set()
        self._stopped = threading.Event()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, LINGER_MS)
        where = _address(bind if bind is not None else connect)  # type: ignore[arg-type]
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

    def send(self, name: str, payload: bytes) -> bool:
        """Send one document; waits for a subscriber, and for room (``lag``). False if
        ``stop()`` came first (the document was not sent)."""
        frame = b" ".join((self.prefix, name.encode(), payload))
        while not self._topics:
            if self._stopped.is_set():
                return False
            self._read_subscriptions(100)
        pause = 0.00005
        while True:
            try:
                self._socket.send(frame, zmq.NOBLOCK)
                return True
            except zmq.Again:
                pass
            if self.drop:
                self._send_lossy(frame)
                return True
            if self._stopped.is_set():
                return False
            self._read_subscriptions(0)
            time.sleep(pause)
            pause = min(pause * 2, 0.005)

    def _send_lossy(self, frame: bytes) -> None:
        """Send ``frame`` to the subscribers with room; count it lost for the others."""
        self._socket.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            self._socket.send(frame, zmq.NOBLOCK)
        finally:
            self._socket.setsockopt(zmq.XPUB_NODROP, 1)
        self.dropped += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= _DROP_LOG_S:
            log.warning(
                "a slow subscriber lost %d documents (%d in all): its queue was full",
                self.dropped - self._dropped_logged,
                self.dropped,
            )
            self._dropped_logged, self._drop_logged_at = self.dropped, now

    def stop(self) -> None:
        """Make a ``send()`` that waits give up (from any thread)."""
        self._stopped.set()

    def close(self) -> None:
        """Close the socket once its queued frames are out (at most ``LINGER_MS``); again
        does nothing."""
        if self._socket.closed:
            return
        if self.dropped > self._dropped_logged:
            log.warning("a slow subscriber lost %d documents in all", self.dropped)
        self._socket.close()
        self._context.term()
