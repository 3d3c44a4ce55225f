"""Scale from zero at the ingress: hold a request while no model replica runs, bounded.

A ModelService at zero replicas keeps its ingress up (on the Ray head). A request that arrives
then cannot be queued by any engine, so the ingress holds it itself, reports how many it holds
as `fathom_requests_waiting{replica="ingress"}` (what wakes the operator's autoscaler), and lets
it through as soon as a replica runs; past `cold_start_timeout_s` it answers 503 with
Retry-After, so no client waits unbounded. The same applies while the first replica starts.

`ColdStart.wait()` is cheap when replicas run: the count (`running_replicas`, one call to the
Serve controller) is trusted for `up_ttl_s` once positive; while none runs, waiting requests
share one poll every `poll_s`. A backend without `running_replicas` (a model in this process)
is always up.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable

from fathom.api.openai_error import APIError

RETRY_AFTER_S = 10.0


class ColdStart:
    def __init__(self, running_replicas: Callable[[], Awaitable[int]] | None, timeout_s: float,
                 report: Callable[[int], None], poll_s: float = 1.0, up_ttl_s: float = 5.0):
        self._count, self.timeout_s, self._report = running_replicas, timeout_s, report
        self.poll_s, self.up_ttl_s = poll_s, up_ttl_s
        self.held = 0
        self._up_at = float("-inf")  # monotonic time of the last positive count
        self._probe: asyncio.Future | None = None
        self._probed_at = float("-inf")

    @classmethod
    def for_backend(cls, backend, timeout_s: float, report: Callable[[int], None]) -> "ColdStart":
        return cls(getattr(backend, "running_replicas", None), timeout_s, report)

    async def wait(self) -> None:
        """Return once a model replica runs; APIError 503 (Retry-After) after `timeout_s`."""
        if self._count is None or await self._up():
            return
        self._hold(+1)
        try:
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                await asyncio.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))
                if await self._up():
                    return
            raise APIError(503, f"No model replica is running and none became ready within {self.timeout_s:g}s "
                                "(the service is scaling from zero); retry shortly.",
                           code="model_not_ready", retry_after=RETRY_AFTER_S)
        finally:
            self._hold(-1)

    async def _up(self) -> bool:
        now = time.monotonic()
        if now - self._up_at < self.up_ttl_s:
            return True
        if self._probe is None or (self._probe.done() and now - self._probed_at >= self.poll_s):
            self._probe, self._probed_at = asyncio.ensure_future(self._count()), now  # shared by all waiters
        try:
            running = await asyncio.shield(self._probe)
        except Exception:  # noqa: BLE001 - the controller being away is "not known to be up"
            return False
        if running > 0:
            self._up_at = time.monotonic()
        return running > 0

    def _hold(self, delta: int) -> None:
        self.held += delta
        self._report(self.held)
