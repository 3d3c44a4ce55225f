"""docs/metrics.md is the one home of the metrics table; it must list exactly what
`fathom.telemetry.metrics.METRICS` defines (on a mismatch the expected table is printed)."""

from pathlib import Path

from fathom.telemetry.metrics import METRICS

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
HEADER = ["| metric | type | labels | meaning |", "|---|---|---|---|"]


def expected_table() -> list[str]:
    return HEADER + [f"| `{name}` | {kind} | {', '.join(labels)} | {doc} |"
                     for name, (kind, doc, labels, _) in METRICS.items()]


def test_docs_table_is_the_metrics_definition():
    lines = [line for line in DOC.read_text().splitlines() if line.startswith("|")]
    expected = expected_table()
    assert lines == expected, "docs/metrics.md should hold this table:\n" + "\n".join(expected)
