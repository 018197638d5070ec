"""Redis Cluster under the wire: what ``wire.Wire`` does differently when its URL names a
cluster (several ``host:port``, or one node answering ``cluster_enabled:1``).

redis-py's ``RedisCluster`` runs single commands and pipelines (routing by slot, following
``MOVED``/``ASK``, refreshing the slot map). Transactions are split by slot here, one
MULTI/EXEC per slot in the order the commands come (a scan's keys share one slot, so a
publisher's flush stays one transaction; the session log's entry goes apart, after).
``ClusterLink`` is ``wire.Link`` on a cluster: a connection per node it writes to and per
slot it reads, redirections followed, and a read of streams on several slots done as one
blocking XREAD per slot at once, merged in the order asked.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.exceptions as rex
from redis.cluster import ClusterNode, RedisCluster

from .._encoding import Entries
from .._errors import InvalidURL, ServerUnavailable, redact
from . import keys
from .commands import Command, key_of
from .protocol import exchange, parse_read, read_command, send_read, translate, translated

if TYPE_CHECKING:
    from .wire import Wire

#: Redirections (MOVED, ASK, TRYAGAIN) one command follows before its error is raised.
MOST_REDIRECTIONS = 16
#: Wait (s) before a command refused with TRYAGAIN (keys of a slot half migrated) is sent again.
TRYAGAIN_S = 0.02
#: Extra wait (s) for the replies of blocking reads that ran out their time on the server.
_LATE_S = 0.2


def split_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """(``url`` naming only its first node, every node's (host, port)) for a URL such as
    ``redis://user:pw@h1:7000,h2:7001/0``; a URL of one node gives itself and []."""
    parts = urlsplit(url)
    creds, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return url, []
    nodes = []
    for hostport in hosts.split(","):
        host, colon, port = hostport.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise InvalidURL(
                f"cannot use {redact(url)!r}: each node of a cluster is host:port "
                f"(redis://user:password@host1:7000,host2:7001), not {hostport!r}"
            )
        nodes.append((host, int(port)))
    first = f"{creds}{at}{nodes[0][0]}:{nodes[0][1]}"
    first_url = urlunsplit(parts._replace(netloc=first))
    check_database(first_url)
    return first_url, nodes


def check_database(url: str) -> None:
    """``InvalidURL`` if ``url`` names a database other than 0, which a cluster lacks."""
    if urlsplit(url).path.strip("/") not in ("", "0"):
        raise InvalidURL(f"cannot use {redact(url)!r}: a cluster has database 0 only")


def cluster_client(
    first_url: str, nodes: list[tuple[str, int]], kwargs: dict[str, Any], retry: bool
) -> RedisCluster:
    """redis-py's cluster client over ``nodes`` (else the node of ``first_url``), with the
    credentials and TLS of ``first_url`` and the socket settings ``kwargs``."""
    check_database(first_url)
    parts = urlsplit(first_url)
    startup = [ClusterNode(h, p) for h, p in nodes] or [
        ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379)
    ]
    options: dict[str, Any] = {
        k: v for k, v in kwargs.items() if k not in ("command_packer", "retry")
    }
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    if parts.scheme == "rediss":
        options["ssl"] = True
    if not retry:
        options["cluster_error_retry_attempts"] = 0
    try:
        client = RedisCluster(startup_nodes=startup, **options)
    except rex.RedisClusterException as exc:
        raise rex.ConnectionError(str(exc)) from exc
    packer = kwargs.get("command_packer")
    if packer is not None:
        # RedisCluster passes no packer to its nodes' connections: give it to the pools of
        # the nodes known now and to the settings of those it meets later (a failover).
        client.nodes_manager.connection_kwargs["command_packer"] = packer
        for node in client.get_nodes():
            pool = client.get_redis_connection(node).connection_pool
            pool.connection_kwargs["command_packer"] = packer
            pool.reset()  # the connection that read the slot map: made again, with it
    return client


def slot_of(command: Command) -> int | None:
    """The cluster slot ``command`` runs in; None for a command without a key."""
    key = key_of(command)
    return None if key is None else keys.hash_slot(key)


def by_slot(commands: Sequence[Command]) -> list[tuple[int | None, list[int]]]:
    """The positions of ``commands`` grouped by slot, groups in the order of their first
    command; keyless commands join the group before them (the first, at the start)."""
    groups: dict[int | None, list[int]] = {}
    current: int | None = None
    for i, command in enumerate(commands):
        slot = slot_of(command)
        if slot is None:
            slot = current if current is not None or not groups else next(iter(groups))
        groups.setdefault(slot, []).append(i)
        current = slot
    return list(groups.items())


@contextlib.contextmanager
def where_lost(client: RedisCluster, url: str, key: str | None) -> Iterator[None]:
    """``translated``, and a node that cannot be reached named with ``key``'s slot: on a
    cluster without a replica for it, that shard's scans are gone, the others go on."""
    try:
        yield
    except (rex.ConnectionError, rex.TimeoutError, rex.ClusterDownError) as exc:
        if key is None:
            raise translate(exc, url) from exc
        slot = keys.hash_slot(key)
        try:
            node = client.nodes_manager.get_node_from_slot(slot).name
        except rex.RedisClusterException:
            node = "no node"
        raise ServerUnavailable(
            f"cannot reach {node}, the cluster node that holds slot {slot} ({key}): {exc}; "
            f"without a replica to take over, its keys are out of reach until it is back",
            url,
        ) from exc
    except (rex.RedisError, rex.RedisClusterException) as exc:
        raise translate(exc, url) from exc


def is_cluster_node(client: Any) -> bool:
    """Whether the server ``client`` talks to runs in cluster mode (False if the user may
    not ask: such a user names the cluster's nodes in its URL)."""
    try:
        return int(client.info("cluster").get("cluster_enabled", 0)) == 1
    except rex.ResponseError:
        return False


class ClusterLink:
    """``wire.Link`` on a cluster (same methods): writes go to the primary of their slot
    on a connection per node; reads of streams on one slot to its primary on one
    connection; a read of several slots sends one XREAD to each at once, on a connection
    per slot, and returns what the first to answer (and any other answered by then) gave.
    A read still waiting on a slot is taken up by the next ``read`` (its entries kept only
    past the IDs then asked), so nothing is read twice nor skipped."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.client: RedisCluster = wire.client
        self._writers: dict[str, Any] = {}  # node name -> connection
        self._readers: dict[int, Any] = {}  # slot -> connection
        self._waiting: dict[int, Any] = {}  # slot -> connection with a read out
        self._pending: set[Any] = set()  # connections out of step if an exchange broke

    # ------------------------------------------------------------------ connections

    def _pool(self, node: ClusterNode) -> Any:
        return self.client.get_redis_connection(node).connection_pool

    def _node(self, slot: int | None) -> ClusterNode:
        if slot is None:
            return self.client.get_default_node()
        return self.client.nodes_manager.get_node_from_slot(slot)

    def _writer(self, node: ClusterNode) -> Any:
        conn = self._writers.get(node.name)
        if conn is None:
            conn = self._writers[node.name] = self._pool(node).get_connection()
        return conn

    def _reader(self, slot: int) -> Any:
        node = self._node(slot)
        conn = self._readers.get(slot)
        if conn is not None and (conn.host, conn.port) != (node.host, node.port):
            self._drop(conn)
            conn = None
        if conn is None:
            conn = self._readers[slot] = self._pool(node).get_connection()
        return conn

    def _give_back(self, conn: Any) -> None:
        """Return ``conn`` (in step) to its node's pool, or drop it if a reply is due."""
        if conn in self._pending or conn in self._waiting.values():
            self._drop(conn)
        else:
            self._release(conn)

    def _drop(self, conn: Any) -> None:
        """Disconnect ``conn`` and give it back to its node's pool."""
        conn.disconnect()
        self._pending.discard(conn)
        for table in (self._writers, self._readers, self._waiting):
            for k in [k for k, c in table.items() if c is conn]:
                del table[k]  # type: ignore[arg-type]
        self._release(conn)

    def _release(self, conn: Any) -> None:
        """Put ``conn`` back in its node's pool (if the node is still known)."""
        node = self.client.get_node(host=conn.host, port=conn.port)
        if node is not None and node.redis_connection is not None:
            node.redis_connection.connection_pool.release(conn)

    def _redirected(self, exc: rex.ResponseError, tries: int) -> ClusterNode | None:
        """After ``exc``: the node to try again (ASK: the importing one, to be asked), or
        None to look the slot up again (MOVED, TRYAGAIN); raises ``exc`` if it is neither
        or after ``MOST_REDIRECTIONS``."""
        if tries >= MOST_REDIRECTIONS or not isinstance(
            exc, (rex.AskError, rex.TryAgainError, rex.ClusterDownError)
        ):
            raise exc
        if isinstance(exc, rex.MovedError):
            self.client.nodes_manager.move_slot(exc)
            return None
        if isinstance(exc, rex.AskError):
            node = self.client.get_node(host=exc.host, port=exc.port)
            if node is None:
                self.client.nodes_manager.initialize()
                return None
            return node
        time.sleep(TRYAGAIN_S * (tries + 1))  # TRYAGAIN; CLUSTERDOWN while a replica takes over
        if isinstance(exc, rex.ClusterDownError):
            self.client.nodes_manager.initialize()
        return None

    # ------------------------------------------------------------------ writes

    def transact(self, commands: Sequence[Command], *, resent: bool = False) -> list[Any]:
        """``Link.transact``: one MULTI/EXEC per slot, in order; replies in the order of
        ``commands``. A slot's transaction is all or nothing; the ones before an error
        stay applied (``resent`` makes sending them again harmless)."""
        replies: list[Any] = [None] * len(commands)
        for slot, positions in by_slot(commands):
            group = [commands[i] for i in positions]
            with where_lost(self.client, self.wire.url, key_of(group[0])):
                done = self._transact_slot(slot, group, resent)
            for i, reply in zip(positions, done, strict=True):
                replies[i] = reply
        return replies

    def _transact_slot(self, slot: int | None, group: list[Command], resent: bool) -> list[Any]:
        asked: ClusterNode | None = None
        tries = 0
        while True:
            node = asked or self._node(slot)
            conn = self._writer(node)
            self._pending.add(conn)
            replies, first = exchange(
                conn, group, resent=resent, asking=asked is not None, replicas=self.wire.replicas
            )
            self._pending.discard(conn)
            if first is None:
                return replies
            if not isinstance(first, rex.ResponseError):
                raise first  # NotReplicated
            asked = self._redirected(first, tries)
            tries += 1

    # ------------------------------------------------------------------ reads

    def read(
        self,
        streams: dict[str, str],
        count: int,
        block_ms: int | None,
        group: tuple[str, str] | None = None,
        before: Sequence[Command] = (),
    ) -> list[tuple[str, Entries]]:
        """``Link.read`` across slots (``group`` and ``before`` only for streams of one)."""
        slots: dict[int, dict[str, str]] = {}
        for key, after in streams.items():
            slots.setdefault(keys.hash_slot(key), {})[key] = after
        for slot in [s for s in self._readers if s not in slots and s not in self._waiting]:
            self._give_back(self._readers.pop(slot))  # a slot no longer read (a scan ended)
        if len(slots) == 1 and not self._waiting:
            [(slot, asked)] = slots.items()
            with where_lost(self.client, self.wire.url, next(iter(asked))):
                return self._read_slot(slot, asked, count, block_ms, group, before)
        if group is not None or before:
            raise ValueError("a group read or commands before it need streams of one slot")
        with where_lost(self.client, self.wire.url, None):
            return self._read_slots(slots, streams, count, block_ms)

    def _read_slot(
        self,
        slot: int,
        streams: dict[str, str],
        count: int,
        block_ms: int | None,
        group: tuple[str, str] | None,
        before: Sequence[Command],
    ) -> list[tuple[str, Entries]]:
        args = read_command(streams, count, block_ms, group)
        tries = 0
        while True:
            conn = self._reader(slot)
            self._pending.add(conn)
            try:
                reply, first = send_read(conn, args, before)
            except rex.ResponseError as exc:
                self._pending.discard(conn)
                self._redirected(exc, tries)
                tries += 1
                continue
            self._pending.discard(conn)
            if first is not None:
                raise first
            return parse_read(reply, group is not None)

    def _read_slots(
        self,
        slots: dict[int, dict[str, str]],
        streams: dict[str, str],
        count: int,
        block_ms: int | None,
    ) -> list[tuple[str, Entries]]:
        for slot in [s for s in self._waiting if s not in slots or block_ms is None]:
            self._drop(self._waiting[slot])  # a read no longer wanted, or one that waits
        for slot, asked in slots.items():
            if slot not in self._waiting:
                conn = self._reader(slot)
                conn.send_command(*read_command(asked, count, block_ms, None), check_health=False)
                self._waiting[slot] = conn
        if block_ms is None:  # reads that do not wait: take every reply
            ready = list(self._waiting)
        else:
            ready = [s for s, c in self._waiting.items() if c.can_read(timeout=0)]
        if not ready and block_ms is not None:
            wait = None if block_ms == 0 else block_ms / 1000 + _LATE_S
            socks = {c._sock: s for s, c in self._waiting.items()}
            readable, _, _ = select.select(list(socks), [], [], wait)
            ready = [socks[sock] for sock in readable]
        got: dict[str, Entries] = {}
        for slot in ready:
            got.update(self._answer(slot, streams))
        return [(key, got[key]) for key in streams if got.get(key)]

    def _answer(self, slot: int, streams: dict[str, str]) -> dict[str, Entries]:
        """The reply of the read out on ``slot``, its entries past the IDs in ``streams``."""
        conn = self._waiting.pop(slot)
        try:
            reply = conn.read_response()
        except rex.ResponseError as exc:
            self._redirected(exc, 0)  # read again next time, where the slot is now
            return {}
        found = {}
        for key, entries in parse_read(reply, False):
            if key in streams:
                kept = entries if streams[key] == "$" else _past(entries, _id(streams[key]))
                if kept:
                    found[key] = kept
        return found

    # ------------------------------------------------------------------ upkeep

    def reset(self) -> None:
        """Drop every connection and look the slots up again (a node may have been replaced);
        the next command connects again."""
        for conn in {*self._writers.values(), *self._readers.values()}:
            self._drop(conn)
        # No node may answer yet: the next command fails then, and its caller waits.
        with contextlib.suppress(rex.RedisError, rex.RedisClusterException):
            self.client.nodes_manager.initialize()

    def connect(self) -> None:
        """Connect to every primary now (``ServerUnavailable`` if one cannot be reached)."""
        with translated(self.wire.url):
            for node in self.client.get_primaries():
                self._writer(node).connect()

    def close(self) -> None:
        """Give the connections back (dropped if a reply is still due)."""
        for conn in {*self._writers.values(), *self._readers.values()}:
            self._give_back(conn)
        self._writers.clear()
        self._readers.clear()
        self._waiting.clear()


def _past(entries: Entries, after: tuple[int, int]) -> Entries:
    """The ``entries`` whose IDs come after ``after``."""
    return [(eid, fields) for eid, fields in entries if _id(eid) > after]


def _id(entry_id: Any) -> tuple[int, int]:
    """A stream entry ID as (ms, seq), for comparing; ``$`` and ``>`` are not IDs here."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)
