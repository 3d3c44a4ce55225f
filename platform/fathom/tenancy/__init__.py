"""fathom.tenancy: tenants, API keys, limits, fair share and metering.

- `keys`: SHA-256 key digests, constant-time lookup (`python -m fathom.tenancy.keys --new`).
- `policy`: `TenantPolicy`, `Limits` (hot-path view of a `fathom.api.tenant.TenantManifest`).
- `registry`: tenants from `--tenants FILE` or the operator's Secret; `TenantSource` reloads.
- `limits`, `metering`, `state`: token buckets with OpenAI's rate-limit headers, the usage
  ledger, and `TenancyState` (admit / settle / usage), plain Python.
- `actor`: that state in one named Ray actor shared by every ingress replica; `TenancyClient`.
- `gate`, `ingress`: what the ingress calls (401/403/429, settlement, `GET /v1/usage`) and the
  `RequestTenancy` context sent to the model replica.
- fair share itself is the engine's `fathom.engine.fair_share.FairSharePolicy` (priority, weighted
  share, VTC); tenancy supplies its keys (tenant names) and weights.
"""
