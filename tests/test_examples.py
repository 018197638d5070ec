"""Every example runs against a real server."""

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_publish_scan(bus):
    env = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "publish_scan.py"), "--points", "20", "--session", "ex"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert f"published {bus.settings.prefix}:scan:{{ex:1}} (finished)" in proc.stdout
    assert "sim_det:image" in proc.stdout and "20 points" in proc.stdout
    assert "kept in Redis for 24.0 h" in proc.stdout
