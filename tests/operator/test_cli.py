"""`python -m fathom_operator` as users and the Helm chart run it: a real subprocess."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from test_operator_model_service import modelservice, objects

from fathom_operator import kube
from support.operator_support import eventually

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT / 'operators'}"}


def test_help_and_bad_flags():
    out = subprocess.run([sys.executable, "-m", "fathom_operator", "--help"], env=ENV, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0 and "--namespace" in out.stdout and "kubeconfig" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "fathom_operator", "--resync-seconds", "0"], env=ENV,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "--resync-seconds must be positive" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "fathom_operator", "--metrics-key-secret", "no-namespace"], env=ENV,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "--metrics-key-secret must be NAMESPACE/NAME" in bad.stderr


async def test_operator_process_against_the_kubeconfig(cluster, kubectl):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fathom_operator", "--namespace", "serving", "--resync-seconds", "1",
        env={**ENV, "KUBECONFIG": os.environ["KUBECONFIG"]},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    failure = None
    try:
        await kubectl.create(kube.MODEL_SERVICES, "serving", modelservice("in-scope"))
        await kubectl.create(kube.MODEL_SERVICES, "elsewhere", {**modelservice("out-of-scope"),
                                                                "metadata": {"name": "out-of-scope", "namespace": "elsewhere"}})
        await eventually(lambda: "in-scope" in objects(cluster, "rayservices"), timeout=30)
        await asyncio.sleep(1.0)
        assert "out-of-scope" not in objects(cluster, "rayservices")  # --namespace is honoured
    except AssertionError as exc:
        failure = exc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            raise
    log = output.decode(errors="replace")[-3000:]
    assert failure is None, f"{failure}\noperator log:\n{log}"
    assert proc.returncode in (0, 130), log
