"""The local cluster (``LocalCluster``, ``databus server start --cluster``) against real
Valkey processes, checked with redis-py's own cluster client."""

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import redis
from conftest import eventually
from redis.cluster import RedisCluster

import databus
from databus import ServerConflict, ServerUnavailable
from databus._local_cluster import (
    CLUSTER_DIR,
    PRIMARY,
    REPLICA,
    SLOTS,
    ClusterState,
    LocalCluster,
    parse_nodes,
    slot_ranges,
)


def _client(url: str) -> RedisCluster:
    """redis-py's cluster client on the first node of ``url``, as the URL's user."""
    userinfo, _, hosts = url.removeprefix("redis://").rpartition("@")
    user, _, password = userinfo.partition(":")
    host, _, port = hosts.split(",")[0].rpartition(":")
    return RedisCluster(host=host, port=int(port), username=user, password=unquote(password))


def _node(state: ClusterState, port: int) -> redis.Redis:
    """One node of ``state`` alone, as ``admin``."""
    return redis.Redis(port=port, username="admin", password=state.admin_password)


def _info(state: ClusterState, port: int, *section: str) -> dict:
    """INFO (or CLUSTER INFO with ``cluster``) of one node."""
    client = _node(state, port)
    try:
        if section == ("cluster",):
            raw = client.execute_command("CLUSTER", "INFO").decode()
            return dict(line.split(":", 1) for line in raw.split())
        return client.info(*section)
    finally:
        client.close()


def _key_in(client: RedisCluster, low: int, high: int) -> str:
    """A key whose slot is in ``low``..``high``."""
    return next(f"k{i}" for i in range(100_000) if low <= client.keyslot(f"k{i}") <= high)


def _port_free(port: int) -> bool:
    """True if a server could listen on ``port`` now (as Valkey does: SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


def test_slot_ranges_cover_every_slot_once():
    for shards in (1, 2, 3, 5, 7):
        ranges = slot_ranges(shards)
        assert len(ranges) == shards and ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
        sizes = [high - low + 1 for low, high in ranges]
        assert max(sizes) - min(sizes) <= 1


def test_cluster_nodes_text_is_parsed():
    text = (
        "a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460 7000 [9->-b2]\n"
        "b2 127.0.0.1:7002@17002,host master,fail? - 0 0 2 connected\n"
        "c3 127.0.0.1:7003@17003 slave a1 0 0 1 connected\n"
    )
    a, b, c = parse_nodes(text)
    assert (a.port, a.slots, a.primary_id, a.healthy) == (
        7001,
        ((0, 5460), (7000, 7000)),
        None,
        True,
    )
    assert (b.port, b.healthy) == (7002, False)
    assert (c.primary_id, "slave" in c.flags, c.slots) == ("a1", True, ())


def test_the_cluster_forms_and_serves_every_slot(valkey_cluster):
    state = valkey_cluster
    assert state.url.startswith("redis://databus:")
    assert state.url.count(",") == len(state.nodes) - 1 == 2
    assert state.password not in repr(state) and state.admin_password not in repr(state)
    client = _client(state.url)
    try:
        assert len(client.get_primaries()) == 3 and len(client.get_nodes()) == 3
        for node in client.get_nodes():
            info = client.cluster_info(target_nodes=node)
            assert info["cluster_state"] == "ok" and info["cluster_known_nodes"] == "3"
            assert info["cluster_slots_assigned"] == info["cluster_slots_ok"] == str(SLOTS)
        for node in state.nodes:
            assert node.role == PRIMARY and len(node.slots) == 1
            key = _key_in(client, *node.slots[0])
            assert client.get_node_from_key(key).port == node.port
            client.set(key, f"on {node.port}")
            assert client.get(key) == f"on {node.port}".encode()
            client.delete(key)
    finally:
        client.close()


def test_the_databus_user_may_not_flush_the_cluster(valkey_cluster):
    client = _client(valkey_cluster.url)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError, match="flushall"):
            client.flushall()
    finally:
        client.close()


def test_replicas_attach_to_each_primary(cluster_with_replicas):
    state = cluster_with_replicas.status()
    primaries = [n for n in state.nodes if n.role == PRIMARY]
    replicas = [n for n in state.nodes if n.role == REPLICA]
    assert len(primaries) == len(replicas) == 3
    assert sorted(n.replica_of for n in replicas) == sorted(n.port for n in primaries)
    for node in replicas:
        replication = _info(state, node.port, "replication")
        assert replication["role"] == "slave" and replication["master_link_status"] == "up"
        assert replication["master_port"] == node.replica_of
    for node in state.nodes:
        assert _info(state, node.port, "cluster")["cluster_state"] == "ok"


def test_a_killed_primary_is_replaced_by_its_replica_and_comes_back_as_one(
    cluster_with_replicas,
):
    state = cluster_with_replicas.status()
    victim = state.nodes[0]
    heir = next(n for n in state.nodes if n.replica_of == victim.port)
    client = _client(state.url)
    key = _key_in(client, *victim.slots[0])
    client.set(key, "before")
    client.wait(1, 1000, target_nodes=client.get_node_from_key(key))  # the replica has it
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()

    def promoted() -> bool:
        heir_sees = _info(state, heir.port, "cluster")
        return heir_sees["cluster_state"] == "ok" and _info(state, heir.port)["role"] == "master"

    assert eventually(promoted, timeout=10), "the replica did not take over"
    assert time.monotonic() - killed < 10
    client.close()
    client = _client(f"redis://databus:{state.password}@127.0.0.1:{heir.port}")
    try:
        assert client.get(key) == b"before" and client.get_node_from_key(key).port == heir.port
    finally:
        client.close()

    after = cluster_with_replicas.restart(victim.port)
    back = next(n for n in after.nodes if n.port == victim.port)
    assert back.running and back.pid != victim.pid
    assert (back.role, back.replica_of) == (REPLICA, heir.port)
    assert next(n for n in after.nodes if n.port == heir.port).slots == victim.slots
    for node in after.nodes:
        assert _info(state, node.port, "cluster")["cluster_state"] == "ok"


def test_start_again_returns_it_and_stop_leaves_nothing(tmp_path):
    cluster = LocalCluster(tmp_path, shards=2, node_timeout_ms=1500)
    first = cluster.start()
    assert (tmp_path / "cluster.json").stat().st_mode & 0o777 == 0o600
    again = cluster.start()
    assert [n.pid for n in again.nodes] == [n.pid for n in first.nodes]
    assert cluster.status() == again
    assert _node(first, first.nodes[0].port).config_get("cluster-node-timeout") == {
        "cluster-node-timeout": "1500"
    }
    with pytest.raises(ServerConflict, match=r"shards 2 \(asked: 3\)"):
        LocalCluster(tmp_path, shards=3, node_timeout_ms=1500).start()

    assert cluster.stop() is True
    for node in first.nodes:
        assert eventually(lambda node=node: _gone(node.pid), timeout=2), node
        assert _port_free(node.port) and _port_free(node.bus_port), node
    assert cluster.status() is None and cluster.stop() is False


def test_a_cluster_not_whole_in_time_names_the_missing_node(tmp_path):
    state = LocalCluster(tmp_path, shards=2).start()
    impatient = LocalCluster(tmp_path, shards=2, timeout=1.0)
    try:
        dead = state.nodes[1]
        os.kill(dead.pid, signal.SIGKILL)
        with pytest.raises(ServerUnavailable, match=rf"within 1 s: .*node {dead.port} is not"):
            impatient.restart(state.nodes[0].port)
        with pytest.raises(ValueError, match="no node of the local cluster has port 1 "):
            impatient.restart(1)
    finally:
        impatient.stop()


def test_a_node_that_does_not_start_is_named(tmp_path):
    cluster = LocalCluster(tmp_path, shards=3, binary="false")
    with pytest.raises(ServerUnavailable, match=r"node 1 of 3 of the local cluster .* did not"):
        cluster.start()
    assert cluster.status() is None


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"shards": 0}, ValueError, r"shards must be >= 1 \(primaries\), got 0"),
        ({"replicas": -1}, ValueError, r"replicas must be >= 0"),
        ({"shards": "3"}, TypeError, r"shards must be an int \(primaries\), not '3'"),
        ({"node_timeout_ms": 0}, ValueError, r"node_timeout_ms must be >= 1"),
        ({"auth": "password"}, ValueError, r"auth must be one of acl, none, not 'password'"),
        ({"timeout": 0}, ValueError, r"timeout must be > 0 seconds"),
    ],
)
def test_bad_arguments_are_named(tmp_path, arguments, error, message):
    with pytest.raises(error, match=message):
        LocalCluster(tmp_path, **arguments)


def _cli(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABUS_RUN_DIR": str(run_dir)}
    env.pop("DATABUS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "databus", "server", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_the_cli_starts_shows_and_stops_a_cluster(tmp_path):
    started = _cli(tmp_path, "start", "--cluster", "2", "--replicas", "1", "--node-timeout", "900")
    try:
        assert started.returncode == 0, started.stderr
        state = LocalCluster(tmp_path / CLUSTER_DIR).status()
        assert state is not None and (state.shards, state.replicas) == (2, 1)
        assert state.node_timeout_ms == 900
        assert f"DATABUS_URL=redis://databus:***@127.0.0.1:{state.nodes[0].port}," in started.stdout
        assert state.password not in started.stdout
        shown = _cli(tmp_path, "status")
        assert shown.returncode == 0, shown.stderr
        for node in state.nodes:
            role = "primary" if node.role == PRIMARY else f"replica  of {node.replica_of}"
            assert f"{node.port} {node.pid:>8}  {role}" in shown.stdout
        assert "0-8191" in shown.stdout and "8192-16383" in shown.stdout
        url = _cli(tmp_path, "url", "--cluster")
        assert url.returncode == 0 and url.stdout.strip() == state.url  # secret included
        scripted = databus.connect(url.stdout.strip())
        assert scripted.wire.cluster and len(scripted.wire.nodes()) == 2
        scripted.close()
        assert _cli(tmp_path, "url").returncode == 1  # no single server runs
    finally:
        stopped = _cli(tmp_path, "stop")
    assert stopped.stdout.strip() == "stopped the local cluster"
    assert _cli(tmp_path, "status").returncode == 1
    assert all(eventually(lambda n=n: _gone(n.pid), timeout=2) for n in state.nodes)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cluster", "0"], "argument --cluster: must be >= 1, got 0"),
        (["--cluster", "2", "--replicas", "-1"], "argument --replicas: must be >= 0, got -1"),
        (["--replicas", "1"], "--replicas: only with `databus server start --cluster N`"),
        (["--cluster", "2", "--appendonly"], "--appendonly is for the single embedded server"),
        (["--cluster"], "give N, the number of primaries"),
    ],
)
def test_the_cli_names_bad_cluster_options(tmp_path, args, message):
    proc = _cli(tmp_path, "start", *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / CLUSTER_DIR).exists()
