"""CrystFEL's own indexamajig (0.12, built outside the project: too heavy for CI) reads a
live sim_det scan through ``databus bridge frames --rep``: every frame once, Bragg spots
found. Runs when ``indexamajig`` is on PATH or named by ``INDEXAMAJIG``; skipped otherwise."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from databus import scan as runner
from databus.clients.frames import FramesBridge
from databus.sim import SimDetector

INDEXAMAJIG = os.environ.get("INDEXAMAJIG") or shutil.which("indexamajig")
GEOMETRY = Path(__file__).parent / "frames_clients" / "sim_det_256.geom"
pytestmark = pytest.mark.skipif(INDEXAMAJIG is None, reason="CrystFEL's indexamajig not found")


def _chunks(stream: Path) -> list[dict[str, int]]:
    """(frame_index, num_peaks) of each complete chunk of an indexamajig stream."""
    text = stream.read_text() if stream.exists() else ""
    found = []
    for chunk in text.split("----- Begin chunk -----")[1:]:
        if "----- End chunk -----" not in chunk:
            continue
        index = re.search(r"header/int/frame_index = (\d+)", chunk)
        peaks = re.search(r"num_peaks = (\d+)", chunk)
        found.append({"frame": int(index.group(1)), "peaks": int(peaks.group(1))})  # type: ignore[union-attr]
    return found


def test_indexamajig_processes_every_frame_of_a_live_scan_once(beamline, tmp_path):
    n = 40
    bridge = FramesBridge(
        "runner",
        "sim_det:image",
        mode="rep",
        address="tcp://127.0.0.1:*",
        constants={"beam_energy": 12000, "detector_distance": 100},
        bus=beamline["bus"],
    ).start()
    command = [
        INDEXAMAJIG, f"--zmq-input={bridge.address}", "--zmq-request=next",
        "--data-format=msgpack", "-g", str(GEOMETRY), "-o", "out.stream", "-j", "2",
        "--indexing=none", "--peaks=peakfinder8", "--threshold=10", "--min-snr=6",
        "--min-pix-count=2", "--max-pix-count=200", "--local-bg-radius=5",
        "--copy-header=frame_index",
    ]  # fmt: skip
    crystfel = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        runner.ascan(beamline["robz"], -5, 5, n, 0.01, SimDetector(shape=(256, 256)))
        deadline = time.monotonic() + 120
        while len(_chunks(tmp_path / "out.stream")) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # a frame served twice would be processed now
    finally:
        crystfel.send_signal(signal.SIGUSR1)  # indexamajig's clean stop: the stream completes
        _, errors = crystfel.communicate(timeout=60)
        bridge.close()
    chunks = _chunks(tmp_path / "out.stream")
    assert sorted(c["frame"] for c in chunks) == list(range(n)), errors[-2000:]
    assert sum(c["peaks"] for c in chunks) > 0
    assert bridge.statistics().served == n
