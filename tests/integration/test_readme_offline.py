"""The README's offline-inference snippet works as pasted (TP=2, EP=2 on Ray rank workers)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_offline_snippet_runs_as_pasted():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    [snippet] = [b for b in blocks if "fathom.LLM(" in b]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT / 'operators'}"}
    out = subprocess.run([sys.executable, "-c", snippet], check=False, capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    token_ids = re.search(r"\[([\d, ]+)\]\s*$", out.stdout.strip())
    assert token_ids and 1 <= len(token_ids.group(1).split(",")) <= 16, out.stdout  # max_tokens=16
