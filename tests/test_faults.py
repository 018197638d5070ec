"""Faults: a dropped connection or a server restart mid-scan loses and repeats nothing."""

import subprocess
import threading
import time

import numpy as np
import pytest
import redis
from conftest import eventually, ping

import databus
from databus.server import _free_port, server_binary


def publish_slowly(bus, session, n, period=0.004):
    scan = bus.session(session).create_scan(title="through faults")
    x = scan.channel("x", "float64")
    scan.prepare()
    scan.start()
    for i in range(n):
        x.send(float(i))
        time.sleep(period)
    scan.end()
    return scan


class Follower:
    def __init__(self, bus, session):
        self.events, self.started = [], threading.Event()
        self.thread = threading.Thread(target=self._run, args=(bus, session), daemon=True)
        self.thread.start()
        assert self.started.wait(10)

    def _run(self, bus, session):
        for event in bus.session(session).follow(started_event=self.started):
            self.events.append(event)
            if event.type is databus.EventType.END_SCAN:
                return

    def values(self):
        blocks = [e.data for e in self.events if e.type is databus.EventType.NEW_DATA]
        return np.concatenate([b.data for b in blocks]).tolist() if blocks else []


def test_killed_connections_are_reopened_and_nothing_is_lost(make_bus):
    bus = make_bus()
    follower = Follower(make_bus(), "drop")
    result = {}
    publisher = threading.Thread(
        target=lambda: result.setdefault("scan", publish_slowly(bus, "drop", 300))
    )
    publisher.start()
    admin = redis.Redis.from_url(bus.url)
    for _ in range(3):
        time.sleep(0.3)
        admin.client_kill_filter(_type="normal", skipme=True)  # every client but this one
    publisher.join(30)
    follower.thread.join(30)
    scan = result["scan"]
    assert scan.end_reason is databus.EndReason.FINISHED
    assert bus.scan(scan.key).channels["x"].get_as_array().tolist() == [
        float(i) for i in range(300)
    ]
    assert follower.values() == [float(i) for i in range(300)]
    assert follower.events[-1].type is databus.EventType.END_SCAN
    admin.close()


@pytest.fixture
def restartable(tmp_path):
    """A Valkey on a fixed port with an append-only file, which the test can kill -9 and
    start again with the same data."""
    port = _free_port()
    args = [
        server_binary(),
        "--port",
        str(port),
        "--dir",
        str(tmp_path),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]
    url = f"redis://127.0.0.1:{port}"

    procs = []

    def start():
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
        assert eventually(lambda: ping(url), timeout=10)

    def kill():
        procs[-1].kill()
        procs[-1].wait()

    start()
    yield url, start, kill
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_server_restart_mid_scan_loses_and_repeats_nothing(restartable):
    url, start, kill = restartable
    bus = databus.connect(url, prefix="rs")
    follower = Follower(databus.connect(url, prefix="rs"), "restart")
    result = {}
    publisher = threading.Thread(
        target=lambda: result.setdefault("scan", publish_slowly(bus, "restart", 400))
    )
    publisher.start()
    time.sleep(0.6)
    kill()
    time.sleep(0.5)  # points keep coming into the publisher's buffer meanwhile
    start()
    publisher.join(60)
    follower.thread.join(30)
    scan = result["scan"]
    assert scan.end_reason is databus.EndReason.FINISHED
    assert bus.scan(scan.key).channels["x"].get_as_array().tolist() == [
        float(i) for i in range(400)
    ]
    assert follower.values() == [float(i) for i in range(400)]
    assert follower.events[-1].type is databus.EventType.END_SCAN
