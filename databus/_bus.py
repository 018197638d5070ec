"""``databus.connect()`` and the ``Bus`` it returns: the connection everything else uses.

The bus owns one ``Wire`` (``_store/wire.py``): every command databus sends goes through
it, or through a wire of its own (``bus.wire_of_own``: a publisher's, packing large buffers
without copying them). ``bus.redis`` is the underlying redis-py client, for whoever needs
to go below databus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import urlsplit

from . import _feed
from ._config import Settings
from ._encoding import text
from ._errors import ClosedError, DatabusError, InvalidURL, redact
from ._publish import Scan
from ._runners import GeventRunner, ThreadRunner, make_runner
from ._server import EmbeddedServer
from ._share import PointShare, ShareResults
from ._sink import BufferPool
from ._store import commands, keys
from ._store.wire import Wire
from ._subscribe import ScanNode, SessionNode, follow, get_scan

if TYPE_CHECKING:
    from ._events import Event

log = logging.getLogger(__name__)

_SCHEMES = ("redis", "rediss", "unix")
#: Least time between two looks at a lost embedded server (seconds).
REVIVE_S = 1.0


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


def _check_url(url: str) -> None:
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise InvalidURL(
            f"cannot use {redact(url)!r}: the scheme must be one of "
            f"{', '.join(s + '://' for s in _SCHEMES)} (e.g. redis://host:6379/0, "
            f"rediss://user:password@host:6380 for TLS, unix:///path/to/socket)"
        )


class Bus:
    """A connection to one databus server. Use ``databus.connect()`` to make one.

    ``wire`` runs its commands (``redis`` is the redis-py client below it); ``settings``
    the configuration in force; ``url`` the server's URL (with the password, if any: log
    ``repr(bus)``, which hides it).
    """

    def __init__(self, url: str, settings: Settings, server: EmbeddedServer | None = None) -> None:
        _check_url(url)
        self.url = url
        self.settings = settings
        #: The embedded server this bus started or found (None for a server given by URL).
        self.server = server
        self._next_revive = 0.0
        self.runner: ThreadRunner | GeventRunner = make_runner(settings.concurrency)
        self._closed = False
        self.wire = Wire(url, connect_timeout=settings.connect_timeout)
        if settings.durability == "replicated":
            try:
                self.wire.check_replicated()
            except DatabusError:
                self.wire.close()
                raise
        #: Frame buffers reused by this bus's scans (see ``sink.BufferPool``).
        self.buffer_pool = BufferPool(settings.buffer_bytes)
        self._attachments: dict[str, _Closable] = {}
        self._attachments_lock = threading.Lock()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Bus {redact(self.url)} prefix={self.settings.prefix!r} {state}>"

    @property
    def redis(self) -> Any:
        """The redis-py client below databus (bytes in, bytes out)."""
        return self.wire.client

    def wire_of_own(self) -> Wire:
        """A new wire with connections of its own, packing large arguments without copying
        them: a publisher's."""
        self._check_open()
        return Wire(
            self.url,
            connect_timeout=self.settings.connect_timeout,
            python_packer=True,
            probe=False,
            cluster=self.wire.cluster,
            replicas=1 if self.settings.durability == "replicated" else 0,
        )

    def attachment(self, name: str, make: Callable[[], C]) -> C:
        """The helper called ``name`` that lives as long as the bus (the shared channels'
        listener): made by ``make()`` on first use, closed when the bus closes."""
        with self._attachments_lock:
            if name not in self._attachments:
                self._attachments[name] = make()
            return cast(C, self._attachments[name])

    def revive_server(self) -> None:
        """After losing the server: if it is the embedded one and its process died (not
        stopped by ``databus server stop``), start it again on its port with its secrets,
        under its state lock, so that of all the clients that lost it one starts it.
        Publishers and walks call this while they reconnect; it looks at most every
        ``REVIVE_S``. A server given by URL, or one still alive, is left as it is."""
        now = time.monotonic()
        if self.server is None or now < self._next_revive:
            return
        self._next_revive = now + REVIVE_S
        try:
            state = self.server.revive()
        except DatabusError as exc:
            log.warning("cannot bring the embedded server back: %s", exc)
            return
        if state is not None and state.url != self.url:
            log.warning(
                "the embedded server came back at %s, not at %s: reconnect with connect()",
                redact(state.url),
                redact(self.url),
            )

    def session(self, name: str) -> Session:
        """The session called ``name``; it need not exist yet."""
        self._check_open()
        return Session(self, name)

    def close(self) -> None:
        """Close the bus's connections. Scans still running keep their own connection."""
        if not self._closed:
            self._closed = True
            for helper in self._attachments.values():
                helper.close()
            self.wire.close()

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self!r} is closed; call databus.connect() again")

    def key(self, session: str, number: int) -> str:
        """The key of scan ``number`` of ``session`` on this bus."""
        return keys.scan(self.settings.prefix, session, number)

    def scan(self, key: str) -> ScanNode:
        """The scan stored under ``key`` (``scan.key`` of a publisher, ``node.db_name``);
        ``UnknownScan`` if it is not (or no longer) in Redis."""
        self._check_open()
        return get_scan(self, key)

    def last_scan_tag(self) -> str:
        """The feed tag of the last scan created in any session ("0-0" when none is
        kept): save it before telling a publisher you are ready, then ``next_scan(since=)``."""
        self._check_open()
        return _feed.last_scan_tag(self)

    def next_scan(
        self, since: str | None = None, *, timeout: float | None = None
    ) -> tuple[str, ScanNode]:
        """The next scan created in any session after tag ``since`` (None: from now on;
        "0-0": the first scan still kept), and its tag: pass that tag as ``since`` to the
        next call and no scan is missed. Scans already gone are skipped. Blocks on a
        connection of its own up to ``timeout`` seconds (None: for ever; 0: does not
        wait), then raises ``ReadTimeout``. ValueError for a ``since`` that is no tag."""
        self._check_open()
        return _feed.next_scan(self, since, timeout)

    def find_scans(
        self, session: str | None = None, number: int | None = None, **info: Any
    ) -> tuple[str, list[str]]:
        """The keys of the scans still kept whose ``session``, ``number`` and scan-info
        fields (``info``: ``type="ascan"``, ``title="ascan *"``...) match, oldest first,
        and the feed tag they end at: every scan is either in the list or created after
        the tag, so ``next_scan(since=tag)`` misses none and repeats none. Text with ``*``
        matches as a wildcard (``"sim*"``, ``"*_test"``); any other value by equality.
        Read-only users may search (no transaction is needed)."""
        self._check_open()
        return _feed.find_scans(self, session, number, info)

    def sessions(self) -> list[str]:
        """Names of the sessions active within the retention time, oldest first."""
        self._check_open()
        names = self.wire.call(*commands.sessions(self.settings.prefix))
        return [text(n) for n in names]


class Session:
    """A named session: scans are created in it and followed through it."""

    def __init__(self, bus: Bus, name: str) -> None:
        keys.check_session_name(name)
        self.bus = bus
        self.name = name

    def __repr__(self) -> str:
        return f"<Session {self.name!r} on {redact(self.bus.url)}>"

    def create_scan(self, info: dict[str, Any] | None = None, **fields: Any) -> Scan:
        """Create and number a new scan in this session; see ``databus._publish.Scan``.

        ``info`` (and keyword ``fields``, merged into it) is the scan info: title, type,
        npoints, count_time, motors, counters and any user fields; it stays updatable
        until the scan ends.
        """
        return Scan.create(self, {**(info or {}), **fields})

    @property
    def node(self) -> SessionNode:
        """The session's reader-side node (walks, as in BLISS)."""
        return SessionNode(self.bus, self.name)

    def scans(self) -> list[ScanNode]:
        """The session's scans still in Redis, oldest first."""
        return self.node.scans()

    def follow(self, *, replay: bool = False, **kwargs: Any) -> Iterator[Event]:
        """Events of this session as they happen: ``Event(type, node, data)``.

        From now on by default (a scan already running is delivered whole), or from the
        first scan still in Redis with ``replay=True``. Keyword arguments are those of the
        classic walks: ``include_filter``, ``exclude_children``, ``wait``,
        ``stop_handler``, ``started_event``.
        """
        return follow(self.node, replay=replay, **kwargs)

    def share(self, channel: str, group: str, **options: Any) -> PointShare:
        """Join point share ``group``: the points of ``channel`` in this session's scans,
        each claimed by one member of the group (``claim()``, then ``done(claim)``).
        ``options``: ``consumer``, ``batch``, ``claim_after``, ``first_scan`` (see
        ``databus.PointShare``)."""
        return PointShare(self.bus, self.name, channel, group, **options)

    def share_results(self, group: str, *, since: str = "0-0") -> ShareResults:
        """The results the members of point share ``group`` record (``PointShare.record``),
        for the one process that reduces them; see ``databus.ShareResults``."""
        return ShareResults(self.bus, self.name, group, since=since)


def connect(url: str | None = None, *, settings: Settings | None = None, **overrides: Any) -> Bus:
    """Connect to the bus at ``url``; with no URL and no ``DATABUS_URL``, to the embedded
    server, started first if none runs.

    ``overrides`` are ``Settings`` fields (``prefix``, ``retention_ttl``...). Raises
    ``InvalidURL`` for an unknown scheme and ``ServerUnavailable`` (naming the URL) if the
    server does not answer within ``connect_timeout`` seconds.
    """
    if settings is None:
        settings = Settings.from_env(**overrides)
    elif overrides:
        settings = settings.replace(**overrides)
    target = url or settings.url
    if target is None:
        server = embedded_server(settings)
        target = server.ensure().url
        return Bus(target, settings.replace(url=target), server)
    _check_url(target)
    return Bus(target, settings.replace(url=target))


def embedded_server(settings: Settings) -> EmbeddedServer:
    """The embedded server ``settings`` name (run directory, memory cap, binary)."""
    return EmbeddedServer(
        settings.server_dir,
        maxmemory=settings.memory_cap,
        binary=settings.server_binary,
        wait=settings.connect_timeout,
    )


_default: Bus | None = None
_default_lock = threading.Lock()


def default_bus() -> Bus:
    """The bus of the classic module-level API (``databus.node``...): connected on first
    use to ``DATABUS_URL`` or the embedded server; see ``set_default_bus``."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = connect()
        return _default


def set_default_bus(bus: Bus | None) -> None:
    """Make ``bus`` the one the classic API uses (None: connect again on next use)."""
    global _default
    with _default_lock:
        _default = bus
