"""TTLs: set at creation, refreshed while the publisher lives, retention at the end."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from databus._store import keys


def scan_keys(bus, scan):
    return [scan.key, keys.scan_log(scan.key), *(c.key for c in scan.channels.values())]


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_every_key_gets_a_ttl_when_created(make_bus):
    bus = make_bus(running_ttl=30, retention_ttl=100)
    scan = bus.session("ttl").create_scan()
    x = scan.channel("x", "float64")
    x.send(1.0)
    assert wait_for(lambda: bus.redis.exists(x.key))
    for key in scan_keys(bus, scan):
        assert 0 < bus.redis.pttl(key) <= 30_000, key
    prefix = bus.settings.prefix
    for key in (
        keys.session_log(prefix, "ttl"),
        keys.session_seq(prefix, "ttl"),
        keys.sessions(prefix),
        keys.scans(prefix),
    ):
        assert 0 < bus.redis.pttl(key) <= 100_000, key
    scan.end()


def test_a_running_scan_is_refreshed_past_its_ttl(make_bus):
    bus = make_bus(running_ttl=1.0)
    scan = bus.session("refresh").create_scan()
    x = scan.channel("x", "float64")
    x.send(1.0)
    time.sleep(2.5)  # the sink renews every running_ttl / 4 while idle
    for key in scan_keys(bus, scan):
        assert bus.redis.exists(key), key
        assert 0 < bus.redis.pttl(key) <= 1000
    scan.end()


def test_end_gives_every_key_the_retention_ttl_and_then_they_go(make_bus):
    bus = make_bus(running_ttl=30, retention_ttl=1.0)
    scan = bus.session("retain").create_scan()
    scan.channel("x", "float64").send(np.arange(5.0))
    scan.end()
    every = scan_keys(bus, scan)
    for key in every:
        assert 0 < bus.redis.pttl(key) <= 1000, key
    assert wait_for(lambda: not any(bus.redis.exists(k) for k in every), timeout=3)


def test_a_publisher_killed_with_sigkill_leaks_nothing_past_the_running_ttl(make_bus, tmp_path):
    bus = make_bus()
    code = f"""
import sys, time, databus
bus = databus.connect({bus.url!r}, prefix={bus.settings.prefix!r}, running_ttl=1.0)
scan = bus.session("killed").create_scan()
x = scan.channel("x", "float64")
x.send(1.0)
time.sleep(0.3)
print(scan.key, x.key, flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    scan_key, channel_key = proc.stdout.readline().split()
    assert bus.redis.exists(scan_key, channel_key, keys.scan_log(scan_key)) == 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_for(
        lambda: not bus.redis.exists(scan_key, channel_key, keys.scan_log(scan_key)), timeout=3
    )
