"""Shared channels across buses, processes, restarts and gevent."""

import logging
import subprocess
import sys

import numpy as np
import pytest
from conftest import eventually, ping

import databus
from databus._server import server_binary
from databus.channels import Channel


def test_default_value_only_if_never_set_and_value_is_authoritative(make_bus):
    a, b, c = make_bus(), make_bus(), make_bus()
    first = Channel("flag", default_value=False, bus=a)
    assert first.value is False
    second = Channel("flag", default_value=True, bus=b)
    assert second.value is False  # somebody set it already
    third = Channel("flag", value=True, bus=c)
    assert third.value is True
    assert eventually(lambda: first.value is True and second.value is True)


def test_a_value_outlives_its_holders_and_a_late_process_reads_it(bus, run_python):
    run_python(f"""
import databus
from databus.channels import Channel
bus = databus.connect({bus.url!r}, prefix={bus.settings.prefix!r})
Channel("late", value={{"gain": 4, "mode": "fast"}}, bus=bus)
""")
    late = Channel("late", default_value=None, bus=bus)
    assert late.value == {"gain": 4, "mode": "fast"}


def test_changes_reach_every_holder_and_their_callbacks(make_bus):
    writer, reader = make_bus(), make_bus()
    seen = []
    holder = Channel("counter", default_value=0, callback=seen.append, bus=reader)
    remote = Channel("counter", bus=writer)
    for i in range(1, 21):
        remote.value = i
    assert eventually(lambda: holder.value == 20)
    assert seen[-1] == 20 and seen == sorted(seen)  # in order, the last one last


def test_last_write_wins_by_the_servers_order(make_bus):
    buses = [make_bus() for _ in range(3)]
    holders = [Channel("race", default_value=-1, bus=b) for b in buses]
    import threading

    def hammer(ch, base):
        for i in range(50):
            ch.value = base + i

    threads = [threading.Thread(target=hammer, args=(h, 100 * k)) for k, h in enumerate(holders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = databus._encoding.unpack_meta(buses[0].redis.hget(holders[0].key, "v"))
    assert eventually(lambda: all(h.value == stored for h in holders))


def test_callbacks_are_kept_errors_logged_and_unregister_works(make_bus, caplog):
    writer, reader = make_bus(), make_bus()
    good = []

    def bad(value):
        raise RuntimeError("analysis crashed")

    holder = Channel("cb", default_value=0, bus=reader)
    holder.register_callback(bad)
    holder.register_callback(good.append)
    remote = Channel("cb", bus=writer)
    with caplog.at_level(logging.ERROR):
        remote.value = 1
        assert eventually(lambda: good == [1])
    assert any("analysis crashed" in r.exc_text for r in caplog.records if r.exc_text)
    holder.unregister_callback(good.append)
    remote.value = 2
    assert eventually(lambda: holder.value == 2) and good == [1]


@pytest.mark.parametrize(
    "value", [3, 2.5, "text", True, None, [1, "a"], {"k": [1, 2]}, np.float32(1.5), np.arange(4)]
)
def test_msgpack_values_round_trip(make_bus, value):
    a, b = make_bus(), make_bus()
    holder = Channel("v", default_value=0, bus=b)
    Channel("v", bus=a).value = value
    expected = value.tolist() if isinstance(value, np.ndarray) else value
    assert eventually(lambda: np.asarray(holder.value).tolist() == np.asarray(expected).tolist())


def test_bad_values_are_a_type_error_naming_the_channel(bus):
    ch = Channel("bad", default_value=0, bus=bus)
    with pytest.raises(TypeError, match=r"channel 'bad'.*cannot be stored"):
        ch.value = object()
    with pytest.raises(TypeError, match="channel 'bad2'"):
        Channel("bad2", value={1, 2j}, bus=bus)
    with pytest.raises(ValueError, match="non-empty"):
        Channel("", bus=bus)
    assert ch.value == 0  # nothing changed


def test_a_holder_reconnects_after_a_server_restart_and_reads_the_value(tmp_path):
    from databus._server import _free_port

    port = _free_port()

    def start():
        return subprocess.Popen(
            [server_binary(), "--port", str(port), "--save", "", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )

    server = start()
    url = f"redis://127.0.0.1:{port}"
    try:
        assert eventually(lambda: ping(url))
        holder_bus = databus.connect(url, prefix="rs")
        holder = Channel("state", value="before", bus=holder_bus)
        server.kill()
        server.wait()
        server = start()
        assert eventually(lambda: ping(url))
        other = databus.connect(url, prefix="rs")
        Channel("state", bus=other).value = "after"  # the new server's version 1
        assert eventually(lambda: holder.value == "after", timeout=10)
        other.close()
        holder_bus.close()
    finally:
        server.kill()
        server.wait()


def test_channels_under_gevent(bus, tmp_path):
    code = f"""
from gevent import monkey
monkey.patch_all()
import gevent, json, databus
from databus.channels import Channel
bus = databus.connect({bus.url!r}, prefix={bus.settings.prefix!r})
seen = []
ch = Channel("g", default_value=0, callback=seen.append, bus=bus)
print("ready", flush=True)
for _ in range(500):
    if ch.value == 42:
        break
    gevent.sleep(0.01)
last = seen[-1] if seen else None
print(json.dumps({{"value": ch.value, "seen": last, "runner": bus.runner.name}}))
"""
    script = tmp_path / "gevent_channel.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    Channel("g", bus=bus).value = 42
    out, _ = proc.communicate(timeout=30)
    import json

    assert json.loads(out.strip().splitlines()[-1]) == {"value": 42, "seen": 42, "runner": "gevent"}
