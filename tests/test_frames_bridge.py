"""The frames bridge against the real clients: a REQ client that decodes as CrystFEL 0.12
does (tests/frames_clients), karabo-bridge's own Client, and plain SUB sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from conftest import eventually
from frames_clients.crystfel_req import CrystfelReqClient, ReplyTimeout

from databus.clients.frames import FramesBridge

SHAPE = (48, 64)  # slow, fast: not square, so the order shows


def _frame(scan_number: int, index: int) -> np.ndarray:
    rng = np.random.default_rng(scan_number * 1000 + index)
    return rng.integers(0, 60000, SHAPE, dtype=np.uint16)


class _Run:
    """A running scan of frames, per-point energies and (optionally) peak lists."""

    def __init__(self, bus, session="mx", n=0, energy=True, peaks=False):
        self.scan = bus.session(session).create_scan({"title": "frames", "distance_mm": 120.5})
        self.image = self.scan.channel("det:image", "uint16", SHAPE)
        self.mono = self.scan.channel("mono:energy", "float64") if energy else None
        self.peaks = self.scan.channel("det:peaks", object) if peaks else None
        self.scan.prepare()
        self.scan.start()
        for i in range(n):
            self.send(i)

    def send(self, i):
        self.image.send(_frame(self.scan.number, i))
        if self.mono is not None:
            self.mono.send(9000.0 + i)
        if self.peaks is not None:
            self.peaks.send({"fs": [1.0 + i, 2.5], "ss": [3.0, 4.0], "intensity": [100.0, 7.0]})


def _bridge(bus, mode="rep", **kwargs):
    options = {
        "constants": {"beam_energy": 9300},
        "from_info": {"detector_distance": "distance_mm"},
    }
    options.update(kwargs)
    return FramesBridge(
        "mx", "det:image", mode=mode, address="tcp://127.0.0.1:*", bus=bus, **options
    ).start()


def _pull(client, seen, stop, lock):
    while not stop.is_set():
        try:
            frame = client.next(timeout=0.2)
        except ReplyTimeout:
            continue
        key = (frame.scalars["scan_number"], frame.scalars["frame_index"])
        np.testing.assert_array_equal(frame.image, _frame(*key).astype("<i4"))
        with lock:
            seen.append(key)


def test_a_crystfel_client_gets_every_frame_bit_exact_with_its_values(bus):
    run = _Run(bus, n=3, peaks=True)
    scan = run.scan
    with (
        _bridge(
            bus, from_channel={"photon_energy": "mono:energy"}, peaks="det:peaks", first_scan=1
        ) as bridge,
        CrystfelReqClient(bridge.address, peak_list_key="peak_list") as client,
    ):
        frames = [client.next(timeout=10) for _ in range(3)]
    scan.end()
    for i, frame in enumerate(frames):
        assert frame.image.dtype == np.dtype("<i4") and frame.image.shape == SHAPE
        np.testing.assert_array_equal(frame.image, _frame(scan.number, i))
        assert frame.scalars["frame_index"] == i
        assert frame.scalars["scan_number"] == scan.number
        assert frame.scalars["scan_key"] == scan.key
        assert frame.scalars["beam_energy"] == 9300
        assert frame.scalars["detector_distance"] == 120.5
        assert frame.scalars["photon_energy"] == 9000.0 + i
        fs, ss, intensity = frame.peaks
        assert list(fs) == [1.0 + i, 2.5] and list(ss) == [3.0, 4.0]
        assert list(intensity) == [100.0, 7.0]
    assert bridge.statistics().served == 3


def test_a_request_waits_for_a_frame_to_come(bus):
    run = _Run(bus)
    scan = run.scan
    with _bridge(bus) as bridge, CrystfelReqClient(bridge.address) as client:
        with pytest.raises(ReplyTimeout):
            client.next(timeout=0.3)  # asked, nothing yet: the request waits
        assert eventually(lambda: bridge.statistics().waiting == 1)
        run.send(0)
        frame = client.next(timeout=10)  # the same request is answered
        assert frame.scalars["frame_index"] == 0
        assert bridge.statistics().requests == 1
    scan.end()


def test_two_clients_of_two_bridges_get_each_frame_of_two_scans_once(bus):
    seen: list[tuple[int, int]] = []
    lock, stop = threading.Lock(), threading.Event()
    one = _bridge(bus, group="shared")
    two = _bridge(bus, group="shared")
    clients = [CrystfelReqClient(one.address), CrystfelReqClient(two.address)]
    pullers = [threading.Thread(target=_pull, args=(c, seen, stop, lock)) for c in clients]
    for t in pullers:
        t.start()
    expected = set()
    try:
        for _ in range(2):
            run = _Run(bus)
            scan = run.scan
            for i in range(60):
                run.send(i)
                expected.add((scan.number, i))
                time.sleep(0.001)
            scan.end()
        assert eventually(lambda: len(seen) >= len(expected), timeout=30)
        time.sleep(0.3)  # a frame served twice would come now
    finally:
        stop.set()
        for t in pullers:
            t.join()
        for c in clients:
            c.close()
        one.close()
        two.close()
    assert len(seen) == len(set(seen)) == len(expected)
    assert set(seen) == expected
    assert one.statistics().served > 0 and two.statistics().served > 0


def _cli(bus, *args: str) -> subprocess.Popen:
    env = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    command = [sys.executable, "-m", "databus", "bridge", "frames"]
    return subprocess.Popen(
        [*command, "--session", "mx", "--channel", "det:image", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_bridge_restarted_mid_scan_serves_the_rest_exactly_once(bus, how):
    address = f"tcp://127.0.0.1:{_free_port()}"
    run = _Run(bus)
    scan = run.scan
    args = ("--rep", address, "--group", "g", "--consumer", "bridge-a", "--from-scan", "1")
    bridge = _cli(bus, *args)
    # As CrystFEL's worker: one REQ socket that 0MQ re-connects to the restarted bridge. A
    # client that drops its socket on a timeout (lazy) would lose a reply already on its way.
    client = CrystfelReqClient(address, rcvtimeo_ms=300)
    got = []
    try:
        for i in range(40):
            run.send(i)
        for _ in range(15):
            got.append(client.next(timeout=20).scalars["frame_index"])
        # The client holds its last frame (no request out), as CrystFEL indexing one; a kill
        # in the very instant after a reply could come before its acknowledgement is sent
        # (that frame would be served again: README, "Frames").
        time.sleep(0.2)
        bridge.send_signal(how)
        bridge.wait(timeout=20)
        for i in range(40, 60):
            run.send(i)
        scan.end()
        bridge = _cli(bus, *args)
        while len(got) < 60:
            got.append(client.next(timeout=20).scalars["frame_index"])
        with pytest.raises(ReplyTimeout):
            client.next(timeout=1.0)
    finally:
        client.close()
        bridge.send_signal(signal.SIGINT)
        out, _ = bridge.communicate(timeout=20)
        print(out)  # the restarted bridge's log, shown when the test fails
    assert sorted(got) == list(range(60)), out
    assert "frames served" in out


def test_the_real_karabo_client_gets_frames_and_values_unmodified(bus):
    from karabo_bridge import Client

    scan = _Run(bus, n=2).scan
    with _bridge(bus, mode="karabo", from_channel={"photon_energy": "mono:energy"}) as bridge:
        client = Client(bridge.address, timeout=10)
        received = [client.next() for _ in range(2)]
    scan.end()
    source = "databus/mx/det:image"
    trains = []
    for i, (data, metadata) in enumerate(received):
        assert list(data) == [source]
        values = data[source]
        assert values["image.data"].dtype == np.uint16  # karabo keeps the dtype
        np.testing.assert_array_equal(values["image.data"], _frame(scan.number, i))
        assert values["frame_index"] == i and values["scan_number"] == scan.number
        assert values["beam_energy"] == 9300 and values["photon_energy"] == 9000.0 + i
        assert values["detector_distance"] == 120.5
        assert metadata[source]["source"] == source
        trains.append(metadata[source]["timestamp.tid"])
    assert trains[0] >= 1 and trains[1] > trains[0]


def test_a_sub_client_gets_topic_and_map_and_nobody_listening_is_counted(bus):
    with _bridge(bus, mode="pub", topic="ondaframedata") as bridge:
        run = _Run(bus, n=2)  # nobody subscribes yet: not sent
        scan = run.scan
        assert eventually(lambda: bridge.statistics().unheard == 2)
        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"ondaframedata")
        sub.connect(bridge.address)
        time.sleep(0.3)  # the subscription reaches the bridge
        for i in range(2, 5):
            run.send(i)
        messages = []
        while len(messages) < 3 and sub.poll(10_000):
            messages.append(sub.recv_multipart())
        sub.close(0)
        context.term()
        scan.end()
    assert [m[0] for m in messages] == [b"ondaframedata"] * 3
    maps = [msgpack.unpackb(m[1]) for m in messages]
    assert [m["frame_index"] for m in maps] == [2, 3, 4]
    image0 = maps[0]["detector_data"]
    assert image0["type"] == "<i4" and image0["shape"] == [48, 64]
    pixels = np.frombuffer(image0["data"], "<i4").reshape(SHAPE)
    np.testing.assert_array_equal(pixels, _frame(scan.number, 2))
    stats = bridge.statistics()
    assert stats.served == 3 and stats.unheard == 2


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--rep", "tcp://127.0.0.1:*", "--set", "beam_energy"], "KEY=VALUE"),
        (["--rep", "tcp://127.0.0.1:*", "--set", "beam=1", "--set", "beam_energy=2"], "prefix"),
        (["--rep", "nowhere:x"], "cannot bind"),
        (["--pub", "tcp://127.0.0.1:*", "--rep", "tcp://127.0.0.1:*"], "not allowed"),
    ],
)
def test_bad_options_are_refused_by_name(bus, args, error):
    proc = _cli(bus, *args)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2, out
    assert error in out


def test_the_bridge_kind_is_listed():
    out = subprocess.run(
        [sys.executable, "-m", "databus", "bridge", "-h"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "frames" in out


def test_a_frame_that_cannot_be_encoded_is_counted_not_served(bus):
    scan = bus.session("mx").create_scan({"title": "wide"})
    image = scan.channel("det:image", "uint32", SHAPE)
    scan.prepare()
    scan.start()
    image.send(np.full(SHAPE, 2**32 - 1, np.uint32))  # does not fit <i4 when forced
    image.send(np.full(SHAPE, 5, np.uint32))
    with (
        _bridge(bus, dtype="i4", first_scan=scan.number) as bridge,
        CrystfelReqClient(bridge.address) as client,
    ):
        frame = client.next(timeout=10)
    scan.end()
    assert frame.scalars["frame_index"] == 1 and int(frame.image[0, 0]) == 5
    assert bridge.statistics().failures == 1


def test_a_frame_made_ready_goes_back_to_the_share_when_no_request_comes(bus):
    scan = _Run(bus, n=5).scan
    with _bridge(bus, group="g", consumer="one") as first, CrystfelReqClient(first.address) as c:
        assert [c.next(timeout=10).scalars["frame_index"] for _ in range(2)] == [0, 1]
        # frame 2 is made ready for this client's next request, which never comes
        assert eventually(lambda: first._share.statistics().released == 1, timeout=5)
    with _bridge(bus, group="g", consumer="two") as second, CrystfelReqClient(second.address) as c:
        got = [c.next(timeout=10).scalars["frame_index"] for _ in range(3)]
    scan.end()
    assert sorted(got) == [2, 3, 4]


def test_frames_a_detector_wrote_to_files_are_served_from_them(beamline, tmp_path):
    import h5py

    from databus import scan as runner
    from databus.sim import SimDetector

    bus = beamline["bus"]
    det = SimDetector(shape=(24, 16), mode="file", directory=tmp_path)
    bridge = FramesBridge(
        "runner", "sim_det:image", mode="rep", address="tcp://127.0.0.1:*", bus=bus
    ).start()
    with bridge, CrystfelReqClient(bridge.address) as client:
        done = runner.ascan(beamline["robz"], -1, 1, 4, 0, beamline["gauss"], det)
        frames = [client.next(timeout=10) for _ in range(4)]
    (path,) = tmp_path.glob("*.h5")
    with h5py.File(path, "r") as f:
        stored = f["entry/data/data"][()]
    assert [f.scalars["scan_key"] for f in frames] == [done.key] * 4
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(frame.image, stored[i].astype("<i4"))
