"""benchmarks/autoscaler_sim.py still runs (a short slice of the day; the figures come from the full run)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_simulation_runs_and_prints_every_fleet():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "autoscaler_sim.py"), "--start-hour", "9", "--hours", "0.5"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    for row in ("fixed (peak)", "hpa-conc 0.8", "fathom defaults", "fathom kv 0.8", "fathom defaults min 0",
                "scale-to-zero day", "wait p50/p95/max", "target on the bursty day"):
        assert row in out, out
