"""The publisher in a gevent.monkey.patch_all() program (BLISS style), in a subprocess."""

import json

CODE = """
from gevent import monkey
monkey.patch_all()
import json, sys, time
import gevent
import numpy as np
import databus

bus = databus.connect({url!r}, prefix={prefix!r})
result = {{"runner": bus.runner.name}}
scan = bus.session("gevent").create_scan()
x = scan.channel("x", "float64")
img = scan.channel("img", "uint16", (256, 256))
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.001)) for _ in range(200)])
for i in range(20_000):
    x.send(float(i))
    if i % 1000 == 0:
        img.send(np.full((256, 256), i // 1000, np.uint16))
        gevent.sleep(0)
x.send(-1.0)
deadline = time.monotonic() + 5
while bus.redis.xlen(x.key) == 0 and time.monotonic() < deadline:
    gevent.sleep(0.001)   # the flusher greenlet runs while we wait
result["flushed_while_running"] = bus.redis.xlen(x.key) > 0
scan.end()
ticker.join()
result["ticks"] = len(ticks)
result["stats"] = scan.statistics().points_acked
print(json.dumps(result))
"""


def test_publishing_under_gevent_monkey_patching(bus, run_python):
    out = run_python(CODE.format(url=bus.url, prefix=bus.settings.prefix)).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {
        "runner": "gevent",
        "flushed_while_running": True,
        "ticks": 200,
        "stats": 20_021,
    }
    from conftest import read_channel

    key = "".join([bus.settings.prefix, ":scan:{gevent:1}"])
    got, total = read_channel(bus, key, "x")
    assert total == 20_001 and got[:-1].tolist() == list(range(20_000)) and got[-1] == -1
    frames, total = read_channel(bus, key, "img")
    assert total == 20 and [int(f[0, 0]) for f in frames] == list(range(20))


def test_explicit_thread_runner_in_a_patched_program(bus, run_python):
    code = CODE.format(url=bus.url, prefix=bus.settings.prefix).replace(
        f"prefix={bus.settings.prefix!r})",
        f"prefix={bus.settings.prefix!r}, concurrency='thread')",
    )
    result = json.loads(run_python(code).stdout.strip().splitlines()[-1])
    assert result["runner"] == "thread" and result["stats"] == 20_021


SHARE = """
from gevent import monkey
monkey.patch_all()
import json
import gevent
import numpy as np
import databus

bus = databus.connect({url!r}, prefix={prefix!r})
session = bus.session("gshare")
members = [session.share("img", "g", consumer=f"m{{i}}") for i in range(2)]
got = {{0: [], 1: []}}
ticks = []

def member(i):
    share = members[i]
    while (claim := share.claim(timeout=1.0)) is not None:
        got[i].append(claim.first)
        share.done(claim)
        gevent.sleep(0.002)

workers = [gevent.spawn(member, i) for i in range(2)]
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.001)) for _ in range(100)])
scan = session.create_scan()
img = scan.channel("img", "uint16", (64, 64))
scan.prepare()
scan.start()
for i in range(100):
    img.send(np.full((64, 64), i, np.uint16))
    gevent.sleep(0.001)
scan.end()
gevent.joinall([*workers, ticker])
print(json.dumps({{"got": got, "ticks": len(ticks)}}))
"""


def test_a_point_share_in_a_patched_program(bus, run_python):
    out = run_python(SHARE.format(url=bus.url, prefix=bus.settings.prefix)).stdout
    result = json.loads(out.strip().splitlines()[-1])
    every = result["got"]["0"] + result["got"]["1"]
    assert sorted(every) == list(range(100))  # each point once, both greenlets served
    assert result["got"]["0"] and result["got"]["1"]
    assert result["ticks"] == 100  # a claim that waits lets other greenlets run


SPLIT_FRAMES = """
from gevent import monkey
monkey.patch_all()
import json
import gevent
import numpy as np
import databus

bus = databus.connect({url!r}, prefix={prefix!r})
with bus.session("gevent-frames").create_scan() as scan:
    img = scan.channel("img", "uint16", (1024, 1100))
    scan.prepare()
    scan.start()
    for i in range(4):
        img.send(np.full((1024, 1100), i, np.uint16))
node = bus.scan(scan.key).channels["img"]
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.001)) for _ in range(20)])
out = np.empty((1024, 1100), np.uint16)
got = [int(node.get(i)[5, 5]) for i in range(4)] + [int(node.read_into(out, 3)[7, 7])]
ticker.join()
print(json.dumps({{"parts": node.desc.parts, "got": got, "ticks": len(ticks)}}))
"""


def test_split_frames_read_straight_into_arrays_in_a_patched_program(bus, run_python):
    out = run_python(SPLIT_FRAMES.format(url=bus.url, prefix=bus.settings.prefix)).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {
        "parts": 2,
        "got": [0, 1, 2, 3, 3],
        "ticks": 20,
    }
