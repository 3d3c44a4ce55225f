"""The chart's operations values, each on and off: the Grafana dashboard (valid JSON, every query
valid PromQL over Fathom's own metric names), the Redis for durable state and the defaults it
gives the chart's ModelServices, and the model cache default."""

import json
import re

import promql_parser
import pytest

from fathom.telemetry.metrics import METRICS
from support.helm_value_sets import DEEPSEEK_V3, EVERYTHING_ON, OPERATIONS_MODEL, R1_DISTILL

# Series a Prometheus scrape of the app exposes: gauges as named, counters with _total,
# histograms as _bucket/_sum/_count.
SERIES = {n for n in METRICS} | {f"{n}{s}" for n, (kind, *_) in METRICS.items() if kind == "histogram"
                                  for s in ("_bucket", "_sum", "_count")}
GRAFANA_MACROS = {"$__rate_interval": "5m", "$__range": "1h", "$model": ".*", "$tenant": ".*"}
NEEDED = {"fathom_requests_total", "fathom_time_to_first_token_seconds_bucket",
          "fathom_time_per_output_token_seconds_bucket", "fathom_kv_cache_usage_ratio",
          "fathom_prefix_cache_hit_tokens_total", "fathom_prefix_cache_queried_tokens_total",
          "fathom_requests_waiting", "fathom_model_replicas", "fathom_model_replicas_desired",
          "fathom_prompt_tokens_total", "fathom_generation_tokens_total", "fathom_cost_total"}


def of_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def dashboards(objs: list[dict]) -> list[dict]:
    return [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]


def model_services(objs: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o["spec"] for o in of_kind(objs, "ModelService")}


def test_grafana_dashboard_is_off_by_default_and_its_queries_are_fathom_promql(helm):
    assert not dashboards(helm.template())
    (cm,) = dashboards(helm.template(EVERYTHING_ON))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Fathom"}
    dashboard = json.loads(cm["data"]["fathom.json"])
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for macro, value in GRAFANA_MACROS.items():
                expr = expr.replace(macro, value)
            promql_parser.parse(expr)  # raises on invalid PromQL
            used |= {name for name in re.findall(r"\b(fathom_[a-z_]+)\b", expr)}
    assert used <= SERIES, f"not Fathom metrics: {sorted(used - SERIES)}"
    assert NEEDED <= used, f"panels missing: {sorted(NEEDED - used)}"


def test_redis_is_off_by_default_and_needs_an_existing_password_secret(helm):
    objs = helm.template({"modelServices": [DEEPSEEK_V3]})
    assert not of_kind(objs, "StatefulSet")
    assert "faultTolerance" not in model_services(objs)["deepseek-v3"]
    err = helm.template_error({"redis": {"enabled": True}})
    assert "redis.auth.existingSecret" in err


def test_chart_redis_gives_every_chart_model_service_durable_state(helm):
    objs = helm.template(EVERYTHING_ON)
    (redis,) = of_kind(objs, "StatefulSet")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert container["env"][0]["valueFrom"] == {"secretKeyRef": {"name": "fathom-redis", "key": "password"}}
    assert "--appendonly yes" in container["command"][2] and "--port 6380" in container["command"][2]
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"
    (svc,) = [s for s in of_kind(objs, "Service") if s["metadata"]["name"] == "fathom-redis"]
    assert svc["spec"]["ports"][0]["port"] == 6380
    for spec in model_services(objs).values():
        assert spec["faultTolerance"] == {"redisAddress": "fathom-redis.fathom.svc:6380",
                                          "redisPasswordSecret": {"name": "fathom-redis", "key": "password"}}


def test_an_existing_redis_is_used_as_given_and_a_spec_of_its_own_wins(helm):
    own = {**DEEPSEEK_V3, "spec": {**DEEPSEEK_V3["spec"], "faultTolerance": {"redisAddress": "mine:6379"}}}
    objs = helm.template({"redis": {"address": "redis.shared.svc:6379"}, "modelServices": [own, R1_DISTILL]})
    assert not of_kind(objs, "StatefulSet")
    specs = model_services(objs)
    assert specs["deepseek-r1"]["faultTolerance"] == {"redisAddress": "redis.shared.svc:6379"}
    assert specs["deepseek-v3"]["faultTolerance"] == {"redisAddress": "mine:6379"}


@pytest.mark.parametrize("values, cache", [
    ({}, {"type": "Node", "hostPath": "/var/cache/fathom/models"}),
    ({"modelCache": {"type": "Shared", "size": "2Ti", "storageClassName": "nfs"}},
     {"type": "Shared", "size": "2Ti", "storageClassName": "nfs"}),
    ({"modelCache": {"type": "None"}}, None),
])
def test_model_cache_default_applies_to_uri_sources_only(helm, values, cache):
    specs = model_services(helm.template({**values, "modelServices": [DEEPSEEK_V3, R1_DISTILL, OPERATIONS_MODEL]}))
    assert specs["deepseek-r1"]["model"].get("cache") == cache  # uri, no cache of its own
    assert "cache" not in specs["deepseek-v3"]["model"]  # a pvc is read in place
    assert specs["deepseek-ops"]["model"]["cache"] == {"type": "Shared", "size": "800Gi"}  # its own wins
