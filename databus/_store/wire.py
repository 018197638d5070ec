"""The one module that executes Redis commands, and the one boundary where Redis errors
become databus errors.

Everything else builds commands as tuples (``commands.py``) and hands them here:

- ``Wire`` is a client: ``call`` runs one command, ``run`` a pipeline (``atomic`` for
  MULTI/EXEC), ``run_each`` a pipeline whose failed replies come back as databus errors.
- ``Link`` is one connection of a client's own, for what must not share one: a
  publisher's packed MULTI/EXEC exchange (``transact``) and a walk's blocking XREAD
  (``read``), both parsed here without redis-py's per-reply callbacks.
- ``ReadLink`` is a ``Link`` whose reads wait out a lost server (the scan feed, cursors).
- ``Subscriber`` is a pub/sub connection (shared channels).
- ``Outage`` is the one reconnection policy: how long a client has been without the
  server, the backoff before its next attempt, when it gives up.

Every exception leaving this module is a ``DatabusError`` (``translated``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis
import redis.exceptions as rex
from redis._parsers.base import BaseParser
from redis._parsers.encoders import Encoder
from redis.backoff import NoBackoff
from redis.connection import PythonRespSerializer
from redis.retry import Retry

from .._encoding import Entries, text
from .._errors import (
    DatabusError,
    InvalidURL,
    PermissionDenied,
    ServerError,
    ServerUnavailable,
    redact,
)
from .commands import Command
from .resp import EntriesReader, ProtocolError, ServerReply

log = logging.getLogger(__name__)


def _driver_info() -> Any:
    """redis-py's driver info (None before redis-py 8, which has none), made once: given
    none, redis-py 8 reads its version from the package metadata for every connection it
    opens (~1 ms; a publisher opens one per scan)."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:
        return None
    return DriverInfo()


_DRIVER_INFO = _driver_info()


#: Bytes a reader takes from its socket at once: frames arrive in 1 MiB reads instead of
#: redis-py's 64 KiB, about 3x fewer recv/feed rounds per 2 MiB frame.
READ_SIZE = 2**20
#: redis-py's threshold above which its Python packer sends an argument as its own buffer
#: (no copy into the command's bytes): any frame is above it.
_UNCOPIED_ABOVE = 6000


class OutOfMemory(ServerError):
    """The server is at its memory cap and refused a write; a refused MULTI/EXEC applied
    nothing (the publisher waits for room, then sends it all again)."""


class CredentialsRefused(ServerUnavailable):
    """The server answers but refuses the user name or password."""


def _user(url: str) -> str:
    """The ACL user named in ``url`` ("default" when none is)."""
    _, sep, rest = url.partition("://")
    creds = rest.rpartition("@")[0] if sep and "@" in rest else ""
    return creds.partition(":")[0] or "default"


def translate(exc: BaseException, url: str) -> BaseException:
    """The databus error for redis-py's ``exc`` (other exceptions are returned as they are)."""
    where = redact(url)
    if isinstance(exc, rex.NoPermissionError):
        return PermissionDenied(
            f"the server at {where} refuses this to user {_user(url)!r}: {exc} "
            f"(a read-only user can follow and read sessions, not publish or set channels)"
        )
    if isinstance(exc, rex.AuthenticationError):
        return CredentialsRefused(f"the server at {where} refuses the credentials: {exc}", url)
    if isinstance(exc, (rex.ConnectionError, rex.TimeoutError)):
        return ServerUnavailable(f"cannot reach the server at {where}: {exc}", url)
    if isinstance(exc, rex.OutOfMemoryError):
        return OutOfMemory(f"the server at {where} is at its memory cap: {exc}")
    if isinstance(exc, rex.RedisError):
        return ServerError(f"the server at {where} answered: {exc}")
    return exc


@contextlib.contextmanager
def translated(url: str) -> Iterator[None]:
    """Raise redis-py exceptions raised inside the block as databus ones (``from exc``)."""
    try:
        yield
    except rex.RedisError as exc:
        raise translate(exc, url) from exc


@dataclasses.dataclass(frozen=True)
class Backoff:
    """The wait before the next reconnection attempt, after ``lost`` seconds without the
    server: ``first``, growing by a quarter of the time lost, at most ``cap`` seconds."""

    first: float = 0.05
    cap: float = 1.0

    def compute(self, lost: float) -> float:
        return min(self.cap, self.first + max(0.0, lost) / 4)


#: The backoff of every reconnecting client (publisher, walks, shared channels).
RECONNECT = Backoff()


class Outage:
    """One client's time without the server. ``wait(exc)`` after each failed attempt:
    logs the first, raises ``exc`` once ``timeout`` seconds have passed, asks for the
    embedded server back (``revive``) and sleeps the backoff. ``over()`` after the next
    success: logs the reconnection and returns how long it took (None if none was lost)."""

    def __init__(
        self,
        what: str,
        *,
        timeout: float | None = None,
        revive: Callable[[], None] | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        backoff: Backoff = RECONNECT,
    ) -> None:
        self.what = what
        self.timeout = timeout
        self.revive = revive
        self.sleep = sleep
        self.backoff = backoff
        #: When the server was lost (monotonic seconds), None while it is there.
        self.since: float | None = None

    def wait(self, exc: DatabusError) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            tail = f" for up to {self.timeout:g} s" if self.timeout is not None else ""
            log.warning("%s: %s; reconnecting%s", self.what, exc, tail)
        elif self.timeout is not None and now - self.since > self.timeout:
            raise exc
        if self.revive is not None:
            self.revive()
        self.sleep(self.backoff.compute(now - self.since))

    def over(self) -> float | None:
        if self.since is None:
            return None
        lost = time.monotonic() - self.since
        self.since = None
        log.warning("%s: reconnected after %.1f s", self.what, lost)
        return lost


def _client(
    url: str,
    connect_timeout: float,
    read_timeout: float | None,
    python_packer: bool,
    retry: bool,
) -> redis.Redis:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": read_timeout,
        "socket_read_size": READ_SIZE,
    }
    if not url.startswith("unix:"):
        kwargs["socket_keepalive"] = True
    if _DRIVER_INFO is not None:
        kwargs["driver_info"] = _DRIVER_INFO
    if python_packer:
        # hiredis' packer copies a 2 MiB frame in 3 ms; the Python one sends it as is.
        encoder = Encoder("utf-8", "strict", False)
        kwargs["command_packer"] = PythonRespSerializer(_UNCOPIED_ABOVE, encoder.encode)
    if not retry:
        kwargs["retry"] = Retry(NoBackoff(), 0)  # a dead server is an answer, not a wait
    try:
        return redis.Redis.from_url(url, **kwargs)
    except ValueError as exc:
        raise InvalidURL(f"cannot use {redact(url)!r}: {exc}") from None


class Wire:
    """A client of the server at ``url`` (bytes in, bytes out).

    ``probe`` pings it first, with a read timeout of ``connect_timeout``, so a server that
    accepts but never answers is reported within it too (the client itself has
    ``read_timeout``, None by default: blocking reads wait as long as they are told).
    ``python_packer`` sends large arguments without copying them (publishers). ``retry``
    False makes one attempt per command (an admin's look at a server that may be dead).
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        read_timeout: float | None = None,
        python_packer: bool = False,
        retry: bool = True,
        probe: bool = True,
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        if probe:
            prober = _client(url, connect_timeout, connect_timeout, False, retry)
            try:
                with translated(url):
                    prober.ping()
            finally:
                prober.close()
        self.client = _client(url, connect_timeout, read_timeout, python_packer, retry)

    def call(self, *command: Any) -> Any:
        """Run one command; its reply as redis-py parses it (HGETALL a dict, INFO a dict...)."""
        with translated(self.url):
            return self.client.execute_command(*command)

    def run(self, commands: Sequence[Command], *, atomic: bool = False) -> list[Any]:
        """Run ``commands`` in one round trip (MULTI/EXEC if ``atomic``); their replies.
        The first error is raised."""
        if not commands:
            return []
        with translated(self.url):
            pipe = self.client.pipeline(transaction=atomic)
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute()

    def run_each(self, commands: Sequence[Command]) -> list[Any]:
        """Like ``run`` (not atomic), but a command the server refuses gives its databus
        error as its reply instead of raising (one bad key does not hide the others)."""
        if not commands:
            return []
        with translated(self.url):
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies = pipe.execute(raise_on_error=False)
        return [translate(r, self.url) if isinstance(r, Exception) else r for r in replies]

    def entries_into(
        self, command: Command, field: bytes, out: memoryview
    ) -> tuple[list[tuple[bytes, dict]], int, bool]:
        """Run the XRANGE ``command`` with the values of ``field`` received one after the
        other straight into ``out`` (``resp.EntriesReader``: big frames without a copy);
        (entries, each value a view of ``out``, bytes filled, True if a value did not fit).
        Tried once: the caller falls back to ``run`` (and its retries) on an error."""
        pool = self.client.connection_pool
        with translated(self.url):
            conn: Any = pool.get_connection()
        in_step = False
        try:
            with translated(self.url):
                conn.send_command(*command, check_health=False)
            reader = EntriesReader(conn._sock)  # connected by get_connection
            try:
                entries, filled = reader.read(field, out)
            except ServerReply as exc:
                in_step = not reader.pending
                raise translate(BaseParser.parse_error(str(exc)), self.url) from None
            except (OSError, ProtocolError) as exc:
                raise ServerUnavailable(
                    f"reading from {redact(self.url)}: {exc}", self.url
                ) from exc
            in_step = not reader.pending
            return entries, filled, reader.overflow
        finally:
            if not in_step:
                conn.disconnect()
            pool.release(conn)

    def link(self) -> Link:
        """A connection of its own (see ``Link``)."""
        return Link(self)

    def subscriber(self) -> Subscriber:
        """A pub/sub connection (see ``Subscriber``)."""
        return Subscriber(self)

    def close(self) -> None:
        self.client.close()


class Link:
    """One connection of its own, taken from its wire's pool until ``close()``.

    ``transact`` sends commands as one packed MULTI/EXEC in one write; ``read`` one XREAD,
    which may block. Both parse replies here: redis-py's Pipeline bookkeeping and its XREAD
    reply callback cost more CPU than the I/O at a publisher's or a walk's rates. After a
    ``ServerUnavailable``, call ``reset()`` and try again (see ``Outage``).
    """

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self._pool = wire.client.connection_pool
        with translated(wire.url):
            self._conn: Any = self._pool.get_connection()
        self._pending = False  # a reply is due: the connection is out of step

    def transact(self, commands: Sequence[Command], *, resent: bool = False) -> list[Any]:
        """Run ``commands`` as one MULTI/EXEC; EXEC's replies. The first error is raised
        (``OutOfMemory`` when the server is at its cap: nothing was applied). ``resent``:
        the batch may have reached the server before the connection dropped, so entries it
        already holds (refused as "equal or smaller" IDs) are not an error."""
        conn = self._conn
        first: BaseException | None = None
        replies: list[Any] = []
        # try/except rather than ``translated``: free when nothing fails, on the hot path.
        try:
            self._pending = True
            conn.send_packed_command(
                conn.pack_commands([("MULTI",), *commands, ("EXEC",)]), check_health=False
            )
            for _ in range(len(commands) + 2):  # +OK, QUEUED..., then EXEC's array
                try:
                    reply = conn.read_response()
                except rex.ResponseError as exc:
                    first = first or exc
                    continue
                if isinstance(reply, list):
                    replies = reply
                    errors = [r for r in reply if isinstance(r, Exception)]
                    if resent:
                        errors = [e for e in errors if "equal or smaller" not in str(e)]
                    first = first or (errors[0] if errors else None)
            self._pending = False
        except rex.RedisError as exc:
            raise translate(exc, self.wire.url) from exc
        if first is not None:
            raise translate(first, self.wire.url) from first
        return replies

    def read(
        self,
        streams: dict[str, str],
        count: int,
        block_ms: int | None,
        group: tuple[str, str] | None = None,
        before: Sequence[Command] = (),
    ) -> list[tuple[str, Entries]]:
        """One XREAD of ``streams`` (key -> last ID read), at most ``count`` entries each,
        blocking up to ``block_ms`` (None: not at all). Returns [(key, entries)].
        ``group`` (group, consumer): XREADGROUP instead, ID ``>`` for entries never handed
        out, ``0`` for the consumer's own pending ones (those deleted since have no fields).
        ``before``: commands sent in the same write, ahead of the read (their first error
        is raised, after the read's reply is taken)."""
        args: list[Any] = ["XREAD", "COUNT", count]
        if group is not None:
            args = ["XREADGROUP", "GROUP", *group, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", *streams.keys(), *streams.values()]
        conn = self._conn
        first: BaseException | None = None
        try:
            self._pending = True
            if before:
                conn.send_packed_command(conn.pack_commands([*before, args]), check_health=False)
                for _ in before:
                    try:
                        conn.read_response()
                    except rex.ResponseError as exc:
                        first = first or exc
            else:
                conn.send_command(*args, check_health=False)
            reply = conn.read_response()
            self._pending = False
        except rex.RedisError as exc:
            raise translate(exc, self.wire.url) from exc
        if first is not None:
            raise translate(first, self.wire.url) from first
        if not reply:
            return []
        pairs = reply.items() if isinstance(reply, dict) else reply  # RESP3 map or RESP2 array
        if group is not None:  # a pending entry deleted since comes back without fields
            pairs = [(key, [(eid, f or []) for eid, f in entries]) for key, entries in pairs]
        return [
            (text(key), [(eid, dict(zip(f[::2], f[1::2], strict=True))) for eid, f in entries])
            for key, entries in pairs
        ]

    def reset(self) -> None:
        """Drop the connection; the next command connects again."""
        self._pending = False
        self._conn.disconnect()

    def connect(self) -> None:
        """Connect now (``ServerUnavailable`` if the server cannot be reached)."""
        with translated(self.wire.url):
            self._conn.connect()

    def close(self) -> None:
        """Give the connection back (dropped if a reply is still due)."""
        if self._pending:
            self._conn.disconnect()
        self._pool.release(self._conn)


class ReadLink:
    """A ``Link`` for blocking reads that waits out a lost server: ``read`` returns None
    after a failed attempt (the ``Outage`` named ``what`` slept its backoff; call it
    again), and raises ``ServerUnavailable`` at once for a read that does not wait, or
    once ``timeout`` seconds have passed. ``reconnected`` is True for the first reply
    after a lost server."""

    def __init__(
        self,
        wire: Wire,
        what: str,
        *,
        timeout: float | None = None,
        revive: Callable[[], None] | None = None,
    ) -> None:
        self.link = wire.link()
        self.outage = Outage(what, timeout=timeout, revive=revive)
        self.reconnected = False

    def read(
        self, streams: dict[str, str], count: int, block_ms: int | None
    ) -> list[tuple[str, Entries]] | None:
        """``Link.read`` of ``streams``; None after a lost server (see the class)."""
        try:
            reply = self.link.read(streams, count, block_ms)
        except ServerUnavailable as exc:
            if block_ms is None:
                raise  # a read that does not wait has nothing to wait for
            self.link.reset()  # connect again on the next read
            self.outage.wait(exc)
            return None
        self.reconnected = self.outage.over() is not None
        return reply

    def close(self) -> None:
        self.link.close()


class Subscriber:
    """A pub/sub connection: ``subscribe(topics)``, then ``message(timeout)`` for the next
    (kind, topic, data), kind being "subscribe" or "message"; None if none came."""

    def __init__(self, wire: Wire) -> None:
        self.url = wire.url
        self._pubsub = wire.client.pubsub(ignore_subscribe_messages=False)

    def subscribe(self, *topics: str) -> None:
        with translated(self.url):
            self._pubsub.subscribe(*topics)

    def message(self, timeout: float) -> tuple[str, str, Any] | None:
        with translated(self.url):
            message = self._pubsub.get_message(timeout=timeout)
        if message is None:
            return None
        return message["type"], text(message["channel"]), message["data"]

    def close(self) -> None:
        self._pubsub.close()
