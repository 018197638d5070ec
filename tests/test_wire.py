"""The wire against a real server: commands run, errors come out as databus errors, a
link's MULTI/EXEC and XREAD, pub/sub, and the one reconnection policy."""

import socket

import numpy as np
import pytest

import databus
from databus._server import EmbeddedServer
from databus._store.protocol import CredentialsRefused, OutOfMemory
from databus._store.wire import Outage, Wire


@pytest.fixture
def wire(bus):
    w = Wire(bus.url, connect_timeout=2)
    yield w
    w.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_replies_come_parsed_and_failures_as_databus_errors_naming_the_server(bus, wire):
    key = f"{bus.settings.prefix}:w"
    assert wire.run([("SET", key, b"v"), ("GET", key)], atomic=True) == [True, b"v"]
    with pytest.raises(databus.ServerError, match="WRONGTYPE") as info:
        wire.call("HGETALL", key)
    assert "127.0.0.1" in str(info.value) and ":***@" in str(info.value)  # password hidden
    replies = wire.run_each([("HGETALL", key), ("GET", key)])
    assert isinstance(replies[0], databus.ServerError) and replies[1] == b"v"


def test_a_server_that_is_not_there_is_unavailable_within_the_timeout():
    url = f"redis://127.0.0.1:{_closed_port()}"
    with pytest.raises(databus.ServerUnavailable, match=url) as info:
        Wire(url, connect_timeout=0.5)
    assert info.value.url == url


def test_wrong_credentials_are_refused_as_such(bus):
    url = bus.url.replace("redis://databus:", "redis://databus:wrong", 1)
    with pytest.raises(CredentialsRefused, match="refuses the credentials"):
        Wire(url, connect_timeout=2)


def test_a_link_resends_a_batch_without_repeating_entries(bus, wire):
    key = f"{bus.settings.prefix}:s"
    link = wire.link()
    try:
        batch = [("XADD", key, "5-0", "f", b"1"), ("XADD", key, "6-0", "f", b"2")]
        assert link.transact(batch) == [b"5-0", b"6-0"]
        with pytest.raises(databus.ServerError, match="equal or smaller"):
            link.transact(batch)
        link.transact(batch, resent=True)  # what the server holds already is not an error
        assert [eid for eid, _ in wire.call("XRANGE", key, "-", "+")] == [b"5-0", b"6-0"]
        assert link.read({key: "5-0"}, 10, None) == [(key, [(b"6-0", {b"f": b"2"})])]
        assert link.read({key: "6-0"}, 10, 1) == []  # blocked 1 ms, nothing new
    finally:
        link.close()


def test_a_link_reconnects_after_reset(bus, wire, admin):
    key = f"{bus.settings.prefix}:r"
    link = wire.link()
    try:
        link.transact([("SET", key, b"1")])
        admin.client_kill_filter(_type="normal", skipme=True)
        with pytest.raises(databus.ServerUnavailable):
            link.transact([("GET", key)])
        link.reset()
        assert link.transact([("GET", key)]) == [b"1"]
    finally:
        link.close()


def test_a_full_server_refuses_a_transaction_whole(tmp_path):
    server = EmbeddedServer(tmp_path / "srv", maxmemory=4 * 2**20)
    state = server.start()
    wire = Wire(state.url, connect_timeout=2)
    link = wire.link()
    try:
        frame = np.zeros(2**20, np.uint8).tobytes()
        with pytest.raises(OutOfMemory, match="memory cap"):
            for n in range(16):
                link.transact([("SET", f"k{n}", frame), ("SET", f"marker{n}", b"1")])
        assert wire.call("EXISTS", f"marker{n}") == 0  # nothing of the refused one applied
    finally:
        link.close()
        wire.close()
        server.stop()


def test_a_subscriber_gets_what_is_published(bus, wire):
    topic = f"{bus.settings.prefix}:topic"
    sub = wire.subscriber()
    try:
        sub.subscribe(topic)
        assert sub.message(2) == ("subscribe", topic, 1)
        wire.call("PUBLISH", topic, b"hello")
        assert sub.message(2) == ("message", topic, b"hello")
    finally:
        sub.close()


def test_an_outage_backs_off_revives_and_gives_up_after_its_timeout():
    waits: list[float] = []
    revived: list[bool] = []
    outage = Outage("test", timeout=0.2, revive=lambda: revived.append(True), sleep=waits.append)
    assert outage.over() is None
    lost = databus.ServerUnavailable("gone")
    outage.wait(lost)
    outage.wait(lost)
    assert waits[0] == pytest.approx(0.05, abs=0.01) and len(revived) == 2
    assert outage.over() >= 0 and outage.since is None
    outage.wait(lost)
    outage.since -= 1.0  # a second later
    with pytest.raises(databus.ServerUnavailable):
        outage.wait(lost)
