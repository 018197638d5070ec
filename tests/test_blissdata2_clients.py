"""blissdata 2.x client scripts (``tests/blissdata_clients/bd2_*.py``: the idioms of
clients K-N of the review, only the import prefix changed) run in subprocesses against
scans published by the 2.x writer side and by our runner; one under gevent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from databus import scan as runner
from databus.blissdata import DataStore
from databus.blissdata.streams.default import Stream
from databus.sim import DiodeCounter, GaussNoiseCounter, SimMotor

CLIENTS = Path(__file__).parent / "blissdata_clients"


@pytest.fixture
def client(bus):
    """``client(script, *args)``: the script running, once it printed READY; ``.finish()``
    waits for its last line (JSON) and returns it decoded."""
    procs = []

    class Client:
        def __init__(self, script, *args):
            env = {
                **os.environ,
                "BLISSDATA_URL": bus.url,
                "DATABUS_PREFIX": bus.settings.prefix,
            }
            self.proc = subprocess.Popen(
                [sys.executable, str(CLIENTS / script), *map(str, args)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            procs.append(self.proc)
            first = self.proc.stdout.readline()
            if first.strip() != "READY":
                raise AssertionError(f"{script} did not start: {first}{self.proc.stderr.read()}")

        def finish(self):
            out, err = self.proc.communicate(timeout=60)
            if self.proc.returncode != 0:
                raise AssertionError(f"client failed ({self.proc.returncode}):\n{out}\n{err}")
            return json.loads(out.strip().splitlines()[-1])

    yield Client
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def publish_2x(bus, session="bd2", npoints=6):
    """A scan published with blissdata 2.x's writer API, as BLISS 2.x publishes one."""
    store = DataStore(bus)
    scan = store.create_scan(
        {
            "name": "loopscan",
            "number": 7,
            "data_policy": "no_policy",
            "session": session,
            "proposal": "ihch123",
        },
        info={"title": f"loopscan {npoints} 0.1", "type": "loopscan", "npoints": npoints},
    )
    timer = scan.create_stream(Stream.make_definition("timer:elapsed_time", "float64"))
    diode = scan.create_stream(Stream.make_definition("sim:diode", np.float64, (), {"unit": "V"}))
    spectrum = scan.create_stream(Stream.make_definition("sim:spectrum", "float32", (16,)))
    scan.prepare()
    scan.start()
    for first in range(0, npoints, 2):
        timer.send(np.arange(first, first + 2) * 0.1)
        diode.send([1.0 + first, 2.0 + first])
        spectrum.send(np.ones((2, 16), np.float32))
    scan.stop()
    scan.info["end_reason"] = "SUCCESS"
    scan.info["end_time"] = "2026-12-01T01:00:00"
    scan.close()
    return scan


def publish_runner(bus, session="bd2", npoints=10):
    """A scan of our step-scan runner (ascan with two counters)."""
    runner.set_session(session)
    try:
        done = runner.ascan(
            SimMotor("robz", low=-10, high=10),
            -1,
            1,
            npoints,
            0.001,
            GaussNoiseCounter(seed=1),
            DiodeCounter("diode", seed=2),
            bus=bus,
        )
    finally:
        runner.set_session(None)
    return done


def test_scan_watcher_k(bus, client):
    watcher = client("bd2_scan_watcher.py", 2)
    written = publish_2x(bus)
    ran = publish_runner(bus)
    events = watcher.finish()
    assert [e["key"] for e in events] == [written.key, ran.key]
    first, second = events
    assert first == {
        "key": written.key,
        "session": "bd2",
        "name": "loopscan",
        "number": 7,
        "proposal": "ihch123",
        "end_reason": "SUCCESS",
        "filename": None,
        "title": "loopscan 6 0.1",
        "state": "CLOSED",
    }
    assert second["session"] == "bd2" and second["end_reason"] == "SUCCESS"
    assert second["number"] == bus.scan(ran.key).number and second["state"] == "CLOSED"


def test_spec_writer_l(bus, client, tmp_path):
    spec = tmp_path / "out.spec"
    writer = client("bd2_spec_writer.py", 2, spec)
    publish_2x(bus)
    ran = publish_runner(bus)
    written = writer.finish()
    assert [w["npoints"] for w in written] == [6, 10]
    assert sorted(written[0]["labels"]) == ["diode", "elapsed_time"]
    assert written[0]["end"] == "SUCCESS"
    assert set(written[1]["labels"]) >= {"robz", "diode"}
    text = spec.read_text()
    assert "#S 7 loopscan 6 0.1" in text and f"#S {bus.scan(ran.key).number} ascan" in text
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    columns = written[0]["labels"].index("elapsed_time")
    assert [float(r.split()[columns]) for r in rows[:6]] == [0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert len(rows) == 16


def test_ewoks_reader_m(bus, client):
    reader = client("bd2_ewoks_reader.py", 2)
    publish_2x(bus)
    ran = publish_runner(bus)
    first, second = reader.finish()
    assert first["counts"] == {"timer:elapsed_time": 6, "sim:diode": 6, "sim:spectrum": 6}
    assert first["sums"]["sim:diode"] == sum([1, 2, 3, 4, 5, 6])
    assert first["sums"]["sim:spectrum"] == 6 * 16
    # its streams end with STOPPED; update(block=False) sees CLOSED only if the writer
    # closed the scan by then (as with blissdata), and the end reason comes with CLOSED
    assert (first["state"], first["end"]) in {("STOPPED", None), ("CLOSED", "SUCCESS")}
    node = bus.scan(ran.key)
    assert second["counts"] == {name: 10 for name in node.channels}
    robz = node.channels["axis:robz"].get_as_array(0, -1)
    assert second["sums"]["axis:robz"] == pytest.approx(float(np.sum(robz)))


def test_session_watcher_n_under_gevent(bus, client):
    watcher = client("bd2_session_watcher.py", "bd2", 2)
    publish_2x(bus, session="elsewhere")  # another session: not followed
    written = publish_2x(bus)
    ran = publish_runner(bus)
    result = watcher.finish()
    assert result["patched"] is True
    scans = result["scans"]
    assert set(scans) == {written.key, ran.key}
    assert scans[written.key]["points"] == {
        "timer:elapsed_time": 6,
        "sim:diode": 6,
        "sim:spectrum": 6,
    }
    assert scans[written.key]["states"][-1] == "CLOSED" and scans[written.key]["end"] == "SUCCESS"
    assert set(scans[ran.key]["points"].values()) == {10} and not scans[ran.key]["sequence"]
