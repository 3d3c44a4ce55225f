"""The replica's seam: one engine generation, traced and measured, in one wrapper.

    rt = start_request_trace(trace_context, model=..., operation="chat", ...)
    async for out in traced_outputs(engine.generate(..., trace_context=rt.carrier), rt):
        ...

``traced_outputs`` passes the engine's ``RequestOutput``s through unchanged, counts output
tokens on the request's span, and when the stream ends (finished, failed, cancelled or
closed) closes the span tree from the engine's own stamps and records the replica's
per-request metrics (queue time). ``OPERATIONS`` maps the API kind to GenAI's operation name.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fathom.telemetry.metrics import FathomMetrics, process_metrics
from fathom.telemetry.spans import RequestTrace

OPERATIONS = {"chat": "chat", "completion": "text_completion"}


async def traced_outputs(
    outputs: AsyncIterator[Any], rt: RequestTrace, metrics: FathomMetrics | None = None
) -> AsyncIterator[Any]:
    """Yield ``outputs`` (engine ``RequestOutput``s) while recording them on ``rt`` (see module doc)."""
    last, reasons = None, {}
    try:
        async for out in outputs:
            rt.tokens(sum(len(c.token_ids) for c in out.outputs))
            for c in out.outputs:
                if c.finish_reason:
                    reasons[c.index] = c.finish_reason
            last = out
            yield out
    except (asyncio.CancelledError, GeneratorExit):
        _close(rt, last, ["abort"], metrics)
        raise
    except BaseException as e:
        if last is not None:
            rt.observe_engine(last.metrics)
        rt.fail(e)
        raise
    else:
        _close(rt, last, [reasons[i] for i in sorted(reasons)], metrics)


def _close(rt: RequestTrace, last: Any, reasons: list[str], metrics: FathomMetrics | None) -> None:
    if last is None:
        rt.finish(reasons)
        return
    rt.observe_engine(last.metrics)
    u = last.usage
    rt.finish(
        reasons,
        input_tokens=u.prompt_tokens,
        output_tokens=u.completion_tokens,
        cached_tokens=u.cached_tokens,
    )
    m = last.metrics
    if m.first_scheduled_time is not None:
        queue_time = m.first_scheduled_time - m.arrival_time
        (metrics or process_metrics()).request_timing(rt.model, queue_time=queue_time)
