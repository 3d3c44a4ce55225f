"""The hot-path view of a tenant: plain frozen dataclasses built once from the `Tenant`
spec (fathom.api.tenant) whenever the tenant source changes, then read on every request.

`Limits` travels with each admission to the shared state actor, so the actor needs no
configuration of its own and every ingress replica enforces the limits it has loaded.
"""

from dataclasses import dataclass, field

ROLES = ("user", "admin")
OPEN_TENANT = "default"


@dataclass(frozen=True)
class Limits:
    """Per-tenant limits; None means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    max_tokens_per_request: int | None = None
    monthly_token_budget: int | None = None


@dataclass(frozen=True)
class TenantPolicy:
    """What the ingress and the scheduler need to know of one tenant.

    `models` empty means every served model. `priority`: larger is served first.
    `key_digests` are SHA-256 hex digests; plaintext keys never reach this object.
    """

    name: str
    key_digests: tuple[str, ...] = ()
    role: str = "user"
    models: frozenset[str] = frozenset()
    priority: int = 0
    weight: float = 1.0
    limits: Limits = field(default_factory=Limits)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models

    @property
    def cache_salt(self) -> str:
        """Prefix-cache salt: blocks are shared only between requests of the same tenant."""
        return f"tenant:{self.name}"


OPEN_POLICY = TenantPolicy(name=OPEN_TENANT, role="admin")
"""Who every request is when no tenants are configured (open, single-tenant mode)."""
