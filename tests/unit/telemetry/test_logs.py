import logging

from fathom.telemetry import get_tracer, install_log_correlation
from fathom.telemetry.logs import LOG_FORMAT, TraceContextFormatter


class _Capture(logging.Handler):
    def __init__(self, fmt: logging.Formatter):
        super().__init__()
        self.setFormatter(fmt)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


def test_log_lines_carry_the_current_trace_and_span(spans):
    install_log_correlation()
    install_log_correlation()  # idempotent: one wrapper only
    logger = logging.getLogger("fathom.test.logs")
    logger.setLevel(logging.INFO)
    plain, suffixed = _Capture(logging.Formatter(LOG_FORMAT)), _Capture(TraceContextFormatter())
    logger.addHandler(plain)
    logger.addHandler(suffixed)
    try:
        with get_tracer().start_as_current_span("work") as s:
            logger.info("inside")
        logger.info("outside")
    finally:
        logger.removeHandler(plain)
        logger.removeHandler(suffixed)
    sc = s.get_span_context()
    ids = f"trace_id={sc.trace_id:032x} span_id={sc.span_id:016x}"
    assert f"[{ids}] inside" in plain.lines[0] and suffixed.lines[0].endswith(f"inside {ids}")
    assert f"trace_id={'0' * 32}" in plain.lines[1]
