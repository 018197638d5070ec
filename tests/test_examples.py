"""Every example, run against a real server (``databus demo``: tests/test_demo.py)."""

import os
import subprocess
import sys
from pathlib import Path

import databus

EXAMPLES = Path(__file__).parent.parent / "examples"


def env_for(bus, session="ex"):
    return {
        **os.environ,
        "DATABUS_URL": bus.url,
        "DATABUS_PREFIX": bus.settings.prefix,
        "DATABUS_SESSION": session,
    }


def run(script, bus, *args, session="ex", timeout=120):
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        env=env_for(bus, session),
        timeout=timeout,
        check=True,
    )


def start(script, bus, *args, session="ex"):
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / script), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env_for(bus, session),
    )
    assert proc.stdout.readline().startswith("following")  # it is subscribed
    return proc


def test_publish_scan(bus):
    proc = run("publish_scan.py", bus, "--points", "20", "--session", "ex")
    assert f"published {bus.settings.prefix}:scan:{{ex:1}} (finished)" in proc.stdout
    assert "sim_det:image" in proc.stdout and "20 points" in proc.stdout
    assert "kept in Redis for 24.0 h" in proc.stdout


def test_stop_alignment_loop_stops_the_doc_scan_past_the_peak(bus):
    """BLISS's data-flow doc, analysis and hook: ascan(robz, -5, 5, 500, 0.001,
    sim_ct_gauss_noise) stops once the counts fall under half their maximum, past the peak
    at robz = 0 (point ~250) and well before the end (half height is at robz ~ 1.1)."""
    analysis = start("stop_alignment_analysis.py", bus, session="align")
    try:
        out = run("stop_alignment_scan.py", bus, session="align").stdout
        result, _ = analysis.communicate(timeout=30)
    finally:
        analysis.kill()
    node = bus.scan(out.split(": ", 1)[0])  # "<key>: stopped after N of 500 points"
    gauss = node.channels["simulation:sim_ct_gauss_noise"].get_as_array()
    robz = node.channels["axis:robz"].get_as_array()
    peak, last = int(gauss.argmax()), len(gauss) - 1
    print(f"peak at point {peak} (robz {robz[peak]:.3f}), stopped at point {last}")
    assert node.end_reason is databus.EndReason.STOPPED and f"stopped after {last + 1} of" in out
    # The highest count is near robz = 0 (Poisson noise moves it: 230..267 in 20,000 draws).
    assert 225 <= peak <= 275 and abs(robz[peak]) < 0.5 and gauss.min() > 0, (peak, gauss)
    assert max(peak, 250) < last < 400 and 0.5 < robz[last] < 3, (peak, last, out, result)
    assert "Stop Alignment scan max_value:" in result and "ended: stopped" in result


def test_follow_session_and_live_table(bus):
    follower = start("follow_session.py", bus, "--scans", "1", session="ft")
    table = start("live_table.py", bus, "--scans", "1", session="ft")
    code = (
        "import databus; from databus import scan; from databus.sim import robz, diode;"
        f"databus.set_default_bus(databus.connect({bus.url!r}, prefix={bus.settings.prefix!r}));"
        "scan.set_session('ft'); scan.ascan(robz, 0, 1, 6, 0.001, diode)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    followed, _ = follower.communicate(timeout=30)
    tabled, _ = table.communicate(timeout=30)
    key = f"{bus.settings.prefix}:scan:{{ft:1}}"
    assert (
        f"{key} started: ascan robz 0 1 6 0.001" in followed
        and f"{key} ended: finished" in followed
    )
    rows = [line.split() for line in tabled.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(6)) and float(rows[-1][1]) == 1.0
    assert "robz    elapsed_time           diode" in tabled  # every scalar channel
    assert f"-- {key} finished" in tabled


def test_bluesky_live_table_and_runengine(bus):
    table = start(
        "bluesky_live_table.py", bus, "--scans", "1", "--fields", "motor,det", session="bx"
    )
    ran = run("bluesky_runengine.py", bus, "--session", "bx", "--points", "5")
    assert "published to session 'bx'" in ran.stdout and "0 dropped" in ran.stdout
    (node,) = bus.session("bx").node.scans()
    assert node.wait_end(30).reason == "finished" and node.info["plan_name"] == "scan"
    assert node.channels["axis:motor"][:].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    tabled, _ = table.communicate(timeout=30)
    rows = [line.split("|") for line in tabled.splitlines() if line.strip()[:2] == "| "]
    motors = [float(r[3]) for r in rows if r[1].strip().isdigit()]
    assert motors == [-1.0, -0.5, 0.0, 0.5, 1.0], tabled
