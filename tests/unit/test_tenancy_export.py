"""The flat usage export: one row per tenant, model and hour, as CSV or JSON lines."""

import calendar
import csv
import io
import json

from fathom.tenancy.export import COLUMNS, render
from fathom.tenancy.state import Settlement, TenancyState

T0 = calendar.timegm((2026, 11, 29, 12, 0, 0))


def state() -> TenancyState:
    st = TenancyState()
    for t, tenant, model, prompt, completion, cost in [
        (T0 + 10, "acme", "m", 100, 20, 0.5), (T0 + 1800, "acme", "m", 50, 5, 0.25),
        (T0 + 3600 + 1, "acme", "m", 7, 3, 0.125), (T0 + 60, "beta", "m", 1, 1, 0.0),
        (T0 + 120, "acme", "other", 9, 1, 1.0),
    ]:
        st.settle(Settlement(None, tenant, model, prompt, 2, completion, cost), t)
    return st


def test_hourly_rows_split_by_hour_tenant_and_model_oldest_first():
    rows = state().usage_rows(T0 + 7200, hourly=True)
    assert [(r["start_time"], r["tenant"], r["model"], r["requests"], r["total_tokens"]) for r in rows] == [
        (T0, "acme", "m", 2, 175), (T0, "acme", "other", 1, 10), (T0, "beta", "m", 1, 2),
        (T0 + 3600, "acme", "m", 1, 10)]
    assert all(r["end_time"] == r["start_time"] + 3600 for r in rows)
    only = state().usage_rows(T0 + 7200, tenant="acme", start=T0 + 3600, end=T0 + 7200, hourly=True)
    assert [(r["start_time"], r["cost"]) for r in only] == [(T0 + 3600, 0.125)]


def test_csv_and_jsonl_carry_the_same_rows():
    rows = state().usage_rows(T0 + 7200, hourly=True)
    table = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    lines = [json.loads(line) for line in render(rows, "jsonl").splitlines()]
    assert tuple(table[0]) == COLUMNS and tuple(lines[0]) == COLUMNS
    assert table[0]["hour"] == lines[0]["hour"] == "2026-11-29T12:00:00Z"
    assert [int(r["prompt_tokens"]) for r in table] == [r["prompt_tokens"] for r in lines] == [150, 9, 1, 7]
    assert sum(float(r["cost"]) for r in table) == sum(r["cost"] for r in lines) == 1.875
    assert render([], "csv") == ",".join(COLUMNS) + "\n" and render([], "jsonl") == ""
