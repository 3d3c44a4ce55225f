"""vLLM's metric names for Fathom's series, so autoscalers and dashboards built for vLLM work unchanged.

With `ServeSettings.vllm_metric_aliases` (ModelService `spec.metrics.vllmAliases`) `/metrics`
also carries each series of `ALIASES` under vLLM's name, with the `model` label renamed to vLLM's
`model_name` (other labels kept). Values are identical: vLLM's `kv_cache_usage_perc` is a 0..1
fraction despite its name, as ours is; prefix-cache queries and hits count tokens in both.
`fathom_requests_waiting` includes the requests the ingress holds at zero replicas, so KEDA or
an HPA on `vllm:num_requests_waiting` can scale from zero too.
"""

# Fathom family (counters without `_total`) -> vLLM family names.
ALIASES: dict[str, tuple[str, ...]] = {
    "fathom_requests_running": ("vllm:num_requests_running",),
    "fathom_requests_waiting": ("vllm:num_requests_waiting",),
    "fathom_kv_cache_usage_ratio": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "fathom_prefix_cache_queried_tokens": ("vllm:prefix_cache_queries",),
    "fathom_prefix_cache_hit_tokens": ("vllm:prefix_cache_hits",),
    "fathom_time_to_first_token_seconds": ("vllm:time_to_first_token_seconds",),
    "fathom_time_per_output_token_seconds": ("vllm:time_per_output_token_seconds",
                                             "vllm:inter_token_latency_seconds"),
    "fathom_e2e_request_latency_seconds": ("vllm:e2e_request_latency_seconds",),
    "fathom_queue_time_seconds": ("vllm:request_queue_time_seconds",),
    "fathom_prompt_tokens": ("vllm:prompt_tokens",),
    "fathom_generation_tokens": ("vllm:generation_tokens",),
    "fathom_spec_decode_num_drafts": ("vllm:spec_decode_num_drafts",),
    "fathom_spec_decode_num_draft_tokens": ("vllm:spec_decode_num_draft_tokens",),
    "fathom_spec_decode_num_accepted_tokens": ("vllm:spec_decode_num_accepted_tokens",),
    "fathom_spec_decode_num_accepted_tokens_per_pos": ("vllm:spec_decode_num_accepted_tokens_per_pos",),
}

# (sample name, sorted label items) -> value, as fathom.telemetry.aggregate merges them
Families = dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]]


def _labels(labels: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(("model_name" if k == "model" else k, v) for k, v in labels))


def aliased(families: Families) -> Families:
    """The vLLM-named copies of the aliased families present in `families` (merged samples)."""
    out: Families = {}
    for name, targets in ALIASES.items():
        if name not in families:
            continue
        kind, doc, samples = families[name]
        for target in targets:
            renamed = {(target + sample[len(name):], _labels(labels)): value
                       for (sample, labels), value in samples.items()}
            out[target] = (kind, f"{doc} (alias of {name})", renamed)
    return out
