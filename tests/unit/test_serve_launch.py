"""Pure pieces of `fathom serve`'s console: the one line a failed replica's error becomes, and
the banner's curl line (open, or with the key placeholder)."""

from fathom.api.serve import ServeSettings
from fathom.serve.launch import banner
from fathom.serve.status import replica_error

SERVE_MESSAGE = (
    "A replica failed to start with exception. Retrying 2 more time(s). Error:\n"
    "\x1b[36mray::ServeReplica:fathom:model.initialize_and_get_metadata()\x1b[39m (pid=1, ip=127.0.0.1)\n"
    '  File "replica.py", line 1928, in initialize\n    raise RuntimeError(traceback.format_exc()) from None\n'
    "RuntimeError: Traceback (most recent call last):\n"
    '  File "core_process.py", line 79, in _await_ready\n    raise value\n'
    "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: invalid header length\n"
)


def test_a_replica_error_becomes_its_exception_line():
    assert replica_error(SERVE_MESSAGE) == "SafetensorError: Error while deserializing header: invalid header length"
    placement = ("...\nfathom.engine.errors.EngineDeadError: model instance is unhealthy: cannot place 2 rank "
                 "workers within 120s: they need 2 CPU and the cluster has 1\n")
    assert replica_error(placement).startswith("EngineDeadError: model instance is unhealthy: cannot place 2 rank")
    assert replica_error("Deployment failed.\nsee the controller log") == "Deployment failed."


def test_banner_curl_line_is_open_or_carries_the_key_placeholder():
    open_line = banner(ServeSettings(port=8001))
    assert "curl http://127.0.0.1:8001/v1/chat/completions -H 'Content-Type: application/json' -d '{" in open_line
    assert "Authorization" not in open_line and "What is 47 + 38?" in open_line  # what the demo model answers
    keyed = banner(ServeSettings(port=8001, api_key_sha256="a" * 64))
    assert '-H "Authorization: Bearer $FATHOM_API_KEY"' in keyed and "export FATHOM_API_KEY=<the key given" in keyed
    exposed = banner(ServeSettings(host="0.0.0.0"))
    assert exposed.startswith("note: the API listens on 0.0.0.0, reachable from the network; use --api-key KEY")
