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
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.exceptions as rex
from redis._parsers.base import BaseParser
from redis._parsers.encoders import Encoder
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import PythonRespSerializer
from redis.retry import Retry

from .._encoding import Entries, text
from .._errors import (
    DatabusError,
    InvalidURL,
    ServerError,
    ServerUnavailable,
    redact,
)
from .cluster import (
    ClusterLink,
    by_slot,
    cluster_client,
    is_cluster_node,
    split_nodes,
    where_lost,
)
from .commands import Command, key_of
from .protocol import (
    exchange,
    parse_read,
    read_command,
    send_read,
    translate,
    translated,
)
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


def _options(
    connect_timeout: float, read_timeout: float | None, url: str, python_packer: bool
) -> dict[str, Any]:
    """redis-py's client settings for a connection to ``url``."""
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
    return kwargs


def _client(
    url: str,
    connect_timeout: float,
    read_timeout: float | None,
    python_packer: bool,
    retry: bool,
) -> redis.Redis:
    kwargs = _options(connect_timeout, read_timeout, url, python_packer)
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
    ``cluster``: whether ``url`` is a Redis Cluster (``cluster.py``); None finds out: a URL
    naming several nodes is one, and so is a single node that says so when probed.
    ``replicas``: how many replicas confirm each transaction of its links (WAIT) before it
    counts as done (``durability="replicated"``: 1).
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
        cluster: bool | None = None,
        replicas: int = 0,
    ) -> None:
        self.url = url
        self.replicas = replicas
        self.connect_timeout = connect_timeout
        first_url, nodes = split_nodes(url)
        if cluster is None and (nodes or not probe):
            cluster = bool(nodes)
        if probe:
            prober = _client(first_url, connect_timeout, connect_timeout, False, retry)
            try:
                with translated(url):
                    prober.ping()
                    if cluster is None:
                        cluster = is_cluster_node(prober)
            finally:
                prober.close()
        #: True on a Redis Cluster: ``client`` is redis-py's ``RedisCluster``.
        self.cluster = bool(cluster)
        self.client: Any
        if self.cluster:
            kwargs = _options(connect_timeout, read_timeout, first_url, python_packer)
            with translated(url):
                self.client = cluster_client(first_url, nodes, kwargs, retry)
        else:
            self.client = _client(url, connect_timeout, read_timeout, python_packer, retry)

    def call(self, *command: Any) -> Any:
        """Run one command; its reply as redis-py parses it (HGETALL a dict, INFO a dict...)."""
        with self._translated([command]):
            if self.cluster and key_of(command) is None:
                return self.client.execute_command(*command, target_nodes=RedisCluster.RANDOM)
            return self.client.execute_command(*command)

    def _translated(self, commands: Sequence[Command]) -> contextlib.AbstractContextManager[None]:
        """``translated``; on a cluster, a lost node is named with the slot it holds."""
        if not self.cluster:
            return translated(self.url)
        return where_lost(self.client, self.url, next(filter(None, map(key_of, commands)), None))

    def nodes(self) -> list[str]:
        """The primaries' names ("host:port"; the one server's redacted URL)."""
        if not self.cluster:
            return [redact(self.url)]
        return [node.name for node in self.client.get_primaries()]

    def node_of(self, key: str) -> str:
        """The name (as ``nodes`` gives it) of the primary that holds ``key``."""
        return self.client.get_node_from_key(key).name if self.cluster else redact(self.url)

    def check_replicated(self) -> None:
        """``ServerError`` naming the primaries without a replica connected: a
        ``durability="replicated"`` publisher would wait on them for ever."""
        alone = [
            node
            for node in self.nodes()
            if int(self.on_node(node, "INFO", "replication").get("connected_slaves", 0)) < 1
        ]
        if alone:
            raise ServerError(
                f"durability='replicated' needs a replica of every primary, and "
                f"{', '.join(alone)} has none connected: attach one (REPLICAOF, or "
                f"`databus server start --cluster N --replicas 1`) or use durability='primary'"
            )

    def on_node(self, name: str, *command: Any) -> Any:
        """Run a command without keys on the primary ``name`` (see ``nodes``)."""
        with translated(self.url):
            if not self.cluster:
                return self.client.execute_command(*command)
            node = self.client.get_node(node_name=name)
            if node is None:
                raise ServerUnavailable(f"no node {name} in the cluster at {redact(self.url)}")
            # The node's own client: its replies as one server gives them (SCAN's cursor).
            return self.client.get_redis_connection(node).execute_command(*command)

    def run(self, commands: Sequence[Command], *, atomic: bool = False) -> list[Any]:
        """Run ``commands`` in one round trip (MULTI/EXEC if ``atomic``); their replies.
        The first error is raised."""
        if not commands:
            return []
        if atomic and self.cluster:
            replies: list[Any] = [None] * len(commands)
            for slot, positions in by_slot(commands):
                group = [commands[i] for i in positions]
                for i, reply in zip(
                    positions, self._pipeline(group, slot is not None), strict=True
                ):
                    replies[i] = reply
            return replies
        return self._pipeline(commands, atomic)

    def _pipeline(self, commands: Sequence[Command], atomic: bool) -> list[Any]:
        with self._translated(commands):
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
        with translated(self.url):
            pool = self._pool_of(command)
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

    def _pool_of(self, command: Command) -> Any:
        """The connection pool of the node that runs ``command``."""
        if not self.cluster:
            return self.client.connection_pool
        node = self.client.get_node_from_key(key_of(command))
        return self.client.get_redis_connection(node).connection_pool

    def link(self) -> AnyLink:
        """A connection of its own (see ``Link``; ``cluster.ClusterLink`` on a cluster)."""
        return ClusterLink(self) if self.cluster else Link(self)

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
        # try/except rather than ``translated``: free when nothing fails, on the hot path.
        try:
            self._pending = True
            replies, first = exchange(
                self._conn, commands, resent=resent, replicas=self.wire.replicas
            )
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
        args = read_command(streams, count, block_ms, group)
        try:
            self._pending = True
            reply, first = send_read(self._conn, args, before)
            self._pending = False
        except rex.RedisError as exc:
            raise translate(exc, self.wire.url) from exc
        if first is not None:
            raise translate(first, self.wire.url) from first
        return parse_read(reply, group is not None)

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


#: What ``Wire.link`` gives: a ``Link``, or a ``cluster.ClusterLink`` (the same methods).
AnyLink = Link | ClusterLink


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
