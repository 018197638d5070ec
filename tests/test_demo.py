"""``databus demo`` against the test's server: its scans, its summary, and its live view
opened in a real browser (Debian's chromium, headless) while the scans run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import canvas_sum, needs_chromium, state, wait

from databus.clients.web.server import listen


def demo(bus, tmp_path, *args: str) -> subprocess.Popen:
    """``databus demo --session demo_t`` on ``bus``, writing under ``tmp_path``."""
    env = {**os.environ, "DATABUS_PREFIX": bus.settings.prefix}
    command = ["demo", "--session", "demo_t", "--url", bus.url, "--root", str(tmp_path / "data")]
    return subprocess.Popen(
        [sys.executable, "-m", "databus", *command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_databus_demo(bus, tmp_path):
    started = time.monotonic()
    proc = demo(bus, tmp_path, "--no-web")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 60
    assert "live view" not in out
    assert "ascan robz -5 5 500 0.002: stopped after" in out
    stopped_at = int(out.split("ascan robz -5 5 500 0.002: stopped after ")[1].split()[0])
    assert 250 < stopped_at < 400  # past the peak (point ~250), by the half-maximum rule
    assert "loopscan 50 0.005: finished after 50 points" in out
    assert "amesh robz -1 1 6 roby -1 1 4 0.01: finished after 24 points" in out
    assert "image[1024, 1024] x24" in out and "The data is in Redis at" in out


def test_demo_options_are_checked(bus, tmp_path):
    for args, why in [
        (["--no-web", "--serve"], "drop --no-web"),
        (["--web-port", "70000"], "0..65535"),
        (["--no-web", "--web-port", "1"], "not allowed with"),
        (["--wait", "-1"], "--wait is seconds >= 0"),
    ]:
        proc = demo(bus, tmp_path, *args)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 2 and why in err, err


@needs_chromium
def test_the_demo_serves_its_live_view_while_it_runs(bus, browser, tmp_path):
    proc = demo(bus, tmp_path, "--web-port", "0", "--serve")
    try:
        first = proc.stdout.readline()
        assert first.startswith("live view: http://127.0.0.1:"), first + proc.stderr.read()
        url = first.split()[2]
        assert "the scans start when a page opens it" in proc.stdout.readline()
        page = browser.new_page()
        page.goto(url)
        wait(page, "s.connected && s.scans.length >= 1")
        assert "ascan" in state(page, "scans[0].title"), "the page did not see the scans run"
        # Watched, the scans go at a pace to follow: the page sees the alignment move.
        wait(page, "!s.scans[0].reason && s.plot.points >= 20", timeout=30)
        wait(page, "s.scans.length === 3 && s.scans.every((scan) => scan.reason)", timeout=60)
        titles = page.locator("#scans tbody tr .title").all_inner_texts()
        assert [t.split()[1] for t in titles] == ["amesh", "loopscan", "ascan"]
        wait(page, "s.selected === s.scans[0].key && s.plot.points === 24")
        assert page.locator("#plot canvas").count() >= 1
        wait(page, "s.frame.channel === 'sim_det:image' && s.frame.index === 23")
        assert canvas_sum(page, "frame") != 0 and state(page, "frame.full") == [1024, 1024]
        wait(page, "s.scans[0].download !== null")  # the writer's file, from --root
        page.close()
        time.sleep(0.5)  # (the summary comes after the writer's last file)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"\nlive view: {url}\n" in out and "serving it until Ctrl-C" in out
    port = int(url.rsplit(":", 1)[1].strip("/"))
    listen("127.0.0.1", port).close()  # released


def test_the_live_view_takes_a_free_port_if_its_own_is_taken(bus, tmp_path):
    from databus.clients.demo import live_view

    holder = listen("127.0.0.1", 0)
    holder.listen()
    port = holder.getsockname()[1]
    try:
        served = live_view(bus, "demo_t", tmp_path, port)
        served.stop()
    finally:
        holder.close()
    assert served.url.startswith("http://127.0.0.1:") and f":{port}/" not in served.url
