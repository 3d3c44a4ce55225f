"""`GET /v1/usage?format=csv|jsonl`: usage per tenant, model and hour, flat, for billing systems.

One row per (hour, tenant, model) with usage, oldest hour first, in `COLUMNS` order: `hour`
(RFC 3339, UTC, the hour's start), `start_time`/`end_time` (Unix seconds, [start, end)), the
tenant and served model, then `requests`, `prompt_tokens`, `cached_prompt_tokens`,
`completion_tokens`, `total_tokens` and `cost` (at the model's pricing). CSV has a header line;
JSON lines has one object per line. The current hour is partial until it ends; a row, once its
hour has ended, never changes. How the rows add up to the Prometheus counters:
docs/operator.md ("Usage export").
"""

import csv
import io
import json
import time

COLUMNS = ("hour", "start_time", "end_time", "tenant", "model", "requests", "prompt_tokens",
           "cached_prompt_tokens", "completion_tokens", "total_tokens", "cost")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


def flat(row: dict) -> dict:
    """An hourly usage row (`TenancyState.usage_rows(hourly=True)`) in `COLUMNS` order."""
    hour = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["start_time"]))
    return {"hour": hour, **{c: row[c] for c in COLUMNS[1:]}}


def render(rows: list[dict], fmt: str) -> str:
    """The rows as CSV (with a header) or JSON lines; `fmt` is a key of `MEDIA_TYPES`."""
    records = [flat(r) for r in rows]
    if fmt == "jsonl":
        return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()
