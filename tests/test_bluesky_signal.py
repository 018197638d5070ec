"""ChannelSignal: bluesky's suspenders and plans on shared channels, with a real RunEngine
and ophyd.sim devices; the changes come from other processes."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky import plans as bp
from bluesky.suspenders import SuspendBoolHigh, SuspendCeil, SuspendFloor
from conftest import eventually
from event_model import DocumentNames, schema_validators
from ophyd.sim import SynAxis, SynGauss

from databus import InvalidName, MetadataError
from databus.channels import Channel
from databus.clients.bluesky import ChannelSignal

#: The issue's bound: flip -> suspended, and clear -> resumed (seconds).
BOUND_S = 0.5

#: Another process: waits until the test sets the channel "go", then writes each
#: (pause, channel, value) step and prints the time just before each write.
WRITER = """
import json, threading, time
import databus
from databus.channels import Channel
bus = databus.connect({url!r}, prefix={prefix!r})
steps = {steps!r}
channels = {{name: Channel(name, bus=bus) for _, name, _ in steps}}
go = threading.Event()
Channel("go", default_value=False, callback=lambda v: v and go.set(), bus=bus)
print("ready", flush=True)
go.wait(30)
times = []
for pause, name, value in steps:
    time.sleep(pause)
    times.append(time.time())
    channels[name].value = value
print(json.dumps(times), flush=True)
"""


@contextlib.contextmanager
def process(code: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``code`` in another interpreter, once it printed ``ready``; killed on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.kill()
            raise AssertionError(f"helper process did not start: {line}\n{proc.stderr.read()}")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def last_line(proc: subprocess.Popen[str]) -> Any:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


class Recorder:
    """The RunEngine's documents, state changes and messages, each with its time."""

    def __init__(self, RE: RunEngine) -> None:
        self.docs: list[tuple[str, dict]] = []
        self.states: list[tuple[float, str]] = []
        self.messages: list[tuple[float, str]] = []
        RE.subscribe(lambda name, doc: self.docs.append((name, doc)))
        RE.state_hook = lambda new, old: self.states.append((time.time(), str(new)))
        RE.msg_hook = lambda msg: self.messages.append((time.time(), msg.command))

    def suspensions(self) -> list[float]:
        return [t for t, state in self.states if state == "suspending"]

    def resumptions(self) -> list[float]:
        return [t for t, command in self.messages if command == "_resume_from_suspender"]

    def events(self) -> list[dict]:
        return [doc for name, doc in self.docs if name == "event"]

    def stop(self) -> dict:
        (stop,) = [doc for name, doc in self.docs if name == "stop"]
        return stop


@pytest.fixture
def RE() -> Iterator[RunEngine]:
    engine = RunEngine({})
    yield engine
    engine.clear_suspenders()


@pytest.fixture
def sim() -> tuple[SynAxis, SynGauss]:
    """A motor that takes 20 ms per move and a detector that reads it."""
    motor = SynAxis(name="motor", delay=0.02)
    det = SynGauss("det", motor, "motor", center=0, Imax=1, sigma=1)
    return motor, det


def every_point(events: list[dict], num: int) -> list[dict]:
    """The last event of each point, checking that every point is there once, except
    the one taken when the suspension came: the RunEngine rewinds to its last checkpoint
    and takes it again (same seq_num)."""
    seq_nums = [e["seq_num"] for e in events]
    assert sorted(set(seq_nums)) == list(range(1, num + 1))
    assert len(seq_nums) - num <= 1
    return list({e["seq_num"]: e for e in events}.values())


def writer(bus, steps: list[tuple[float, str, Any]]) -> str:
    return WRITER.format(url=bus.url, prefix=bus.settings.prefix, steps=steps)


def go_on_first_event(RE: RunEngine, bus) -> None:
    """Set the channel "go" when the plan's first event is out (the plan is running)."""
    go = Channel("go", default_value=False, bus=bus)

    def first_event(name: str, doc: dict) -> None:
        if not go.value:
            go.value = True

    RE.subscribe(first_event, "event")


def test_suspend_bool_high_flipped_by_another_process(bus, RE, sim):
    _, det = sim
    RE.install_suspender(SuspendBoolHigh(ChannelSignal("beam_lost", default_value=False, bus=bus)))
    record = Recorder(RE)
    go_on_first_event(RE, bus)
    with process(writer(bus, [(0.1, "beam_lost", True), (0.8, "beam_lost", False)])) as proc:
        RE(bp.count([det], num=30, delay=0.05))
        flipped, cleared = last_line(proc)
    (suspended,) = record.suspensions()
    (resumed,) = record.resumptions()
    assert 0 <= suspended - flipped <= BOUND_S
    assert 0 <= resumed - cleared <= BOUND_S
    events = record.events()
    every_point(events, 30)
    assert not [e for e in events if suspended < e["time"] < resumed]  # held meanwhile
    assert record.stop()["exit_status"] == "success"


def test_a_plan_waits_for_a_channel_tripped_before_it_starts(bus, RE, sim):
    _, det = sim
    Channel("beam_lost", value=True, bus=bus)
    RE.install_suspender(SuspendBoolHigh(ChannelSignal("beam_lost", bus=bus)))
    record = Recorder(RE)
    Channel("go", value=True, bus=bus)  # the writer clears the flag at once
    with process(writer(bus, [(0.3, "beam_lost", False)])) as proc:
        RE(bp.count([det], num=2))
        (cleared,) = last_line(proc)
    (start,) = [doc for name, doc in record.docs if name == "start"]
    assert 0 <= start["time"] - cleared <= BOUND_S


@pytest.mark.parametrize(
    ("make", "values", "start"),
    [
        (lambda s: SuspendFloor(s, 0.5, resume_thresh=0.8), [0.2, 0.6, 0.9], 1.0),
        (lambda s: SuspendCeil(s, 30.0, resume_thresh=25.0), [35.0, 28.0, 20.0], 20.0),
    ],
    ids=["floor", "ceil"],
)
def test_floor_and_ceil_on_a_float_channel_during_a_scan(bus, RE, sim, make, values, start):
    """Out of range suspends; back past the suspend threshold but not the resume one
    keeps the scan suspended; past the resume threshold resumes it."""
    motor, det = sim
    RE.install_suspender(make(ChannelSignal("reading", default_value=start, bus=bus)))
    record = Recorder(RE)
    go_on_first_event(RE, bus)
    out, between, back = values
    steps = [(0.1, "reading", out), (0.4, "reading", between), (0.4, "reading", back)]
    with process(writer(bus, steps)) as proc:
        RE(bp.scan([det], motor, -1, 1, 40))
        t_out, t_between, t_back = last_line(proc)
    (suspended,) = record.suspensions()
    (resumed,) = record.resumptions()
    assert 0 <= suspended - t_out <= BOUND_S
    assert resumed > t_back > t_between  # the value in between did not resume it
    assert resumed - t_back <= BOUND_S
    points = every_point(record.events(), 40)
    assert [e["data"]["motor"] for e in points] == pytest.approx(np.linspace(-1, 1, 40))


def test_put_and_set_reach_a_plain_channel_in_another_process(bus, RE):
    shutter = ChannelSignal("shutter", default_value=0.0, bus=bus)
    code = f"""
import json, threading
import databus
from databus.channels import Channel
bus = databus.connect({bus.url!r}, prefix={bus.settings.prefix!r})
seen, done = [], threading.Event()
def changed(value):
    seen.append(value)
    if value == 3.5:
        done.set()
Channel("shutter", callback=changed, bus=bus)
print("ready", flush=True)
done.wait(20)
print(json.dumps(seen), flush=True)
"""
    with process(code) as proc:
        shutter.put(1.5)
        status = shutter.set(2.5)
        status.wait(5)
        RE(bps.mv(shutter, 3.5))
        seen = last_line(proc)
    assert status.success and shutter.get() == 3.5
    assert seen == [0.0, 1.5, 2.5, 3.5]  # the value it found, then every write


def test_reading_the_signal_in_a_plan_gives_a_proper_data_key(make_bus, RE, sim):
    bus, other = make_bus(), make_bus()
    _, det = sim
    gain = ChannelSignal("gain", default_value=1.0, bus=bus)
    Channel("gain", bus=other).value = 4.0  # an analysis elsewhere sets it
    assert eventually(lambda: gain.get() == 4.0)
    record = Recorder(RE)
    RE(bp.count([det, gain], num=3))
    for name, doc in record.docs:
        schema_validators[DocumentNames[name]].validate(doc)
    (descriptor,) = [doc for name, doc in record.docs if name == "descriptor"]
    assert descriptor["data_keys"]["gain"] == {
        "source": "databus:shared:gain",
        "dtype": "number",
        "dtype_numpy": "<f8",
        "shape": [],
        "object_name": "gain",
    }
    assert [e["data"]["gain"] for e in record.events()] == [4.0, 4.0, 4.0]


def test_subscribers_see_every_change_in_order_with_old_values(make_bus):
    bus, other = make_bus(), make_bus()
    flag = ChannelSignal("step", default_value=0, bus=bus)
    calls: list[tuple[Any, Any]] = []
    flag.subscribe(lambda old_value, value, **kw: calls.append((old_value, value)), run=True)
    remote = Channel("step", bus=other)
    for i in range(1, 21):
        remote.value = i
    assert eventually(lambda: len(calls) == 21)
    assert calls == [(None, 0)] + [(i - 1, i) for i in range(1, 21)]
    flag.destroy()
    remote.value = 99
    time.sleep(0.2)  # a change after destroy() must not reach the old subscriber
    assert len(calls) == 21


def test_a_blocked_subscriber_does_not_hold_back_the_shared_channels(make_bus):
    """Subscribers run in their own task: one waiting for another channel's change
    would wait forever if it ran in the channel listener that delivers that change."""
    bus, other = make_bus(), make_bus()
    gate = threading.Event()
    Channel("other", default_value=0, callback=lambda value: value and gate.set(), bus=bus)
    released: list[bool] = []
    slow = ChannelSignal("slow", default_value=0, bus=bus)
    slow.subscribe(lambda value, **kw: value and released.append(gate.wait(10)), run=False)
    Channel("slow", bus=other).value = 1
    Channel("other", bus=other).value = 1
    assert eventually(lambda: released, timeout=15) and released == [True]


def test_bool_data_key_and_the_errors_that_name_the_fix(bus):
    flag = ChannelSignal("interlock", default_value=True, bus=bus)
    assert flag.describe()["interlock"]["dtype"] == "boolean"
    unset = ChannelSignal("never_set", bus=bus)
    assert unset.get() is None
    with pytest.raises(ValueError, match=r"'never_set'.*default_value="):
        unset.describe()
    with pytest.raises(MetadataError, match="never_set"):
        unset.put(object())
    with pytest.raises(InvalidName, match="channel"):
        ChannelSignal("bad\nname", bus=bus)


GEVENT = """
from gevent import monkey
monkey.patch_all()
import json, threading
import databus
from databus.clients.bluesky import ChannelSignal
bus = databus.connect({url!r}, prefix={prefix!r})
sig = ChannelSignal("mode", default_value=0, bus=bus)
calls, done = [], threading.Event()
def changed(old_value, value, **kwargs):
    calls.append([old_value, value])
    if value == 5:
        done.set()
sig.subscribe(changed, run=True)
print("ready", flush=True)
done.wait(20)
sig.put("from gevent")
print(json.dumps({{"runner": bus.runner.name, "calls": calls}}), flush=True)
"""


def test_the_channel_side_under_gevent_monkey_patching(bus):
    """A RunEngine under gevent is no bluesky set-up; the signal's channel side is tested."""
    seen: list[Any] = []
    mode = Channel("mode", default_value=0, callback=seen.append, bus=bus)
    with process(GEVENT.format(url=bus.url, prefix=bus.settings.prefix)) as proc:
        for i in range(1, 6):
            mode.value = i
        result = last_line(proc)
    assert result == {"runner": "gevent", "calls": [[None, 0]] + [[i - 1, i] for i in range(1, 6)]}
    assert eventually(lambda: mode.value == "from gevent") and seen[-1] == "from gevent"
