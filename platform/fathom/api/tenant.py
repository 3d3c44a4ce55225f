"""The `Tenant` resource (fathom.dev/v1alpha1): who may call the API, on what, and how much.

One vocabulary for the `Tenant` custom resource and the `--tenants FILE` of `fathom serve`:
the file is a YAML stream of `TenantManifest`s exactly as applied to Kubernetes. Keys are never
inline: in a file a key is `{sha256: <hex digest>}`; in a cluster it is usually
`{secretKeyRef: {name, key}}`, which the operator resolves and hashes into the Secret the
ingress reads (as a file of manifests with `sha256` keys only).
"""

import hashlib
import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from fathom.api.base import Spec
from fathom.api.model_service import API_VERSION, Condition

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def hash_api_key(key: str) -> str:
    """The stored form of an API key: its SHA-256 digest in lowercase hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class SecretKeySelector(Spec):
    """A key of a Secret in the Tenant's namespace (core/v1 SecretKeySelector)."""

    name: str = Field(..., min_length=1, description="Secret name.")
    key: str = Field(..., min_length=1, description="Key within the Secret's data.")


class ApiKey(Spec):
    """One API key: exactly one of `sha256` (a digest) or `secretKeyRef` (cluster only)."""

    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="SHA-256 hex digest of the key (files and rendered config).")
    secret_key_ref: SecretKeySelector | None = Field(None, description="Secret key holding the plaintext key (cluster only; the operator stores its digest).")

    @field_validator("sha256")
    @classmethod
    def _lowercase(cls, v: str | None) -> str | None:
        return v.lower() if v is not None else None

    @model_validator(mode="after")
    def _exactly_one(self) -> "ApiKey":
        if (self.sha256 is None) == (self.secret_key_ref is None):
            raise ValueError("an API key needs exactly one of sha256, secretKeyRef")
        return self


class TenantLimits(Spec):
    """Limits enforced at the ingress across all its replicas; unset = unlimited."""

    requests_per_minute: int | None = Field(None, ge=1, description="Requests accepted per minute.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Prompt plus completion tokens per minute.")
    max_concurrent_requests: int | None = Field(None, ge=1, description="Requests in flight at once.")
    max_tokens_per_request: int | None = Field(None, ge=1, description="Largest prompt plus max_tokens of one request.")
    monthly_token_budget: int | None = Field(None, ge=1, description="Prompt plus completion tokens per calendar month (UTC).")


class TenantSpec(Spec):
    """A tenant's keys, role, allowed models, scheduling class and limits."""

    api_keys: list[ApiKey] = Field(..., min_length=1, description="Keys that authenticate as this tenant (several at once for rotation).")
    role: Literal["user", "admin"] = Field("user", description="admin may read every tenant's usage; user only its own.")
    models: list[str] = Field(default_factory=list, description="Served model names this tenant may use; empty = all.")
    priority_class: int = Field(0, ge=-100, le=100, description="Scheduling class: higher classes are scheduled first.")
    weight: float = Field(1.0, gt=0, le=1000, description="Fair-share weight among tenants of one priority class.")
    limits: TenantLimits = Field(default_factory=TenantLimits, description="Rate, concurrency, size and budget limits.")

    @property
    def digests(self) -> list[str]:
        """Digests of the keys given as `sha256` (secretKeyRef keys need the operator)."""
        return [k.sha256 for k in self.api_keys if k.sha256 is not None]

    def require_digests_only(self, where: str) -> None:
        """Raise if a key needs a Secret (a tenants file has no cluster to resolve it in)."""
        for i, key in enumerate(self.api_keys):
            if key.secret_key_ref is not None:
                raise ValueError(f"{where}: apiKeys[{i}] uses secretKeyRef, which only works in a cluster; give sha256")


class ObjectMeta(Spec):
    """The metadata a manifest needs; server-set fields (uid, resourceVersion…) are ignored."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(..., pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253, description="Tenant name (DNS subdomain).")
    namespace: str | None = Field(None, description="Namespace of the Tenant object.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")


class TenantManifest(Spec):
    """A whole Tenant object: what `kubectl apply` takes and what a `--tenants` file holds."""

    api_version: Literal["fathom.dev/v1alpha1"] = Field(API_VERSION, description="fathom.dev/v1alpha1.")
    kind: Literal["Tenant"] = Field("Tenant", description="Tenant.")
    metadata: ObjectMeta = Field(..., description="Object metadata; metadata.name is the tenant's name.")
    spec: TenantSpec = Field(..., description="The tenant.")

    @property
    def name(self) -> str:
        return self.metadata.name


class TenantStatus(Spec):
    """Observed state of a Tenant, written by the operator only."""

    phase: Literal["Applied", "Invalid"] | None = Field(None, description="Applied once its keys and limits are in the tenants Secret.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready condition with reason and message.")
    observed_generation: int | None = Field(None, description="metadata.generation last applied.")
    key_count: int | None = Field(None, description="API keys resolved and hashed into the tenants Secret.")
    secret_name: str | None = Field(None, description="Secret in this namespace that the ingress reads.")
    applied_time: str | None = Field(None, description="RFC 3339 time the Secret last took this tenant's spec.")
