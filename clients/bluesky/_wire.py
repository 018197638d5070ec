"""bluesky's 0MQ wire, sending side: one frame ``prefix b" " name b" " payload`` per
document, what ``bluesky.callbacks.zmq.Publisher`` sends, on an XPUB socket (``_xpub``).

``bind``: an unmodified ``RemoteDispatcher(address)`` connects to the socket directly.
``connect``: it connects to a bluesky ``Proxy``'s input port (the proxy's own PUB side drops
for its slow subscribers, as it always does). The socket waits for a subscription before
it sends anything (and again whenever every subscriber has left, or the proxy went away),
so nothing is published into the void. A dispatcher that subscribes later gets the
documents from then on (the middle of a run, without its start: start the dispatchers
first, or restart the bridge, which sends every running scan again from its start). What
slow subscribers get (``on_slow`` lag or drop) is said in ``_xpub``.
"""

from __future__ import annotations

from .._xpub import PublishSocket


class DocumentSocket(PublishSocket):
    """A ``PublishSocket`` sending bluesky frames; ValueError for a bad address, prefix,
    ``on_slow`` or ``hwm``."""

    def __init__(
        self,
        *,
        bind: str | None = None,
        connect: str | None = None,
        prefix: bytes = b"",
        on_slow: str = "lag",
        hwm: int = 1000,
    ) -> None:
        if not isinstance(prefix, bytes) or b" " in prefix:
            raise ValueError(f"prefix must be bytes without a space, got {prefix!r}")
        self.prefix = prefix
        super().__init__(bind=bind, connect=connect, on_slow=on_slow, hwm=hwm)

    def send_document(self, name: str, payload: bytes) -> bool:
        """Send one document (see ``PublishSocket.send``)."""
        return self.send((b" ".join((self.prefix, name.encode(), payload)),))
