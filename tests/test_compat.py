"""The same data model on the embedded Valkey and on Debian's redis-server 7.0."""

import time

import numpy as np
import pytest
from conftest import read_channel

import databus


def test_round_trip_seal_and_ttl(any_bus):
    scan = any_bus.session("compat").create_scan(title="compat")
    x = scan.channel("x", "float64")
    c = scan.channel("c", "complex64", (3,))
    img = scan.channel("img", "uint16", (1024, 1024))
    for i in range(1000):
        x.send(float(i))
    c.send(np.ones((4, 3), "c8") * 1j)
    frames = np.arange(3 * 1024 * 1024, dtype=np.uint16).reshape(3, 1024, 1024)
    img.send(frames)
    scan.end()
    assert read_channel(any_bus, scan.key, "x")[0].tolist() == list(range(1000))
    assert np.array_equal(read_channel(any_bus, scan.key, "c")[0], np.ones((4, 3), "c8") * 1j)
    got, total = read_channel(any_bus, scan.key, "img")
    assert total == 3 and np.array_equal(got, frames)
    assert 0 < any_bus.redis.pttl(img.key) <= 86_400_000
    with pytest.raises(Exception, match="exhausted"):
        any_bus.redis.xadd(x.key, {"d": b""})


def test_frames_do_not_fall_into_the_next_allocator_size_class(any_bus):
    """On jemalloc (Redis 7) a 2 MiB frame in one entry costs 2.5 MiB; split, it does not."""
    scan = any_bus.session("mem").create_scan()
    img = scan.channel("img", "uint16", (1024, 1024))
    for _ in range(10):
        img.send(np.ones((1024, 1024), np.uint16))
    scan.end()
    assert any_bus.redis.memory_usage(img.key, samples=0) / 10 < 2.15e6


def test_short_retention_expires_on_both(any_bus):
    bus = databus.connect(any_bus.url, settings=any_bus.settings.replace(retention_ttl=0.5))
    scan = bus.session("exp").create_scan()
    scan.channel("x", "float64").send(1.0)
    scan.end()
    time.sleep(0.8)
    assert not bus.redis.exists(scan.key)
    bus.close()
