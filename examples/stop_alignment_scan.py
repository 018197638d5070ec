"""The acquisition half of the online-analysis loop: an alignment scan whose watchdog hook
stops it when the shared channel ``stop_alignment`` is set (by stop_alignment_analysis.py).

    python examples/stop_alignment_analysis.py &     # first: it follows the session
    python examples/stop_alignment_scan.py

The hook and scan below are BLISS code with only the imports changed.
"""

from databus import channels, scan
from databus.scan import ascan
from databus.sim import robz, sim_ct_gauss_noise


class StopAlignmentHook(scan.WatchdogCallback):
    def __init__(self):
        super().__init__()
        self._stop_flag = channels.Channel("stop_alignment", value=False)

    def on_scan_data(self, *args):
        if self._stop_flag.value:
            raise StopIteration


s = ascan(robz, -5, 5, 500, 0.001, sim_ct_gauss_noise, save=False, run=False)
s.set_watchdog_callback(StopAlignmentHook())
s.run()
print(f"{s.key}: {s.end_reason.value} after {s.npoints_done} of 500 points")
print(f"robz at {robz.position:.3f}")
