"""Tenants as the ingress knows them: loaded from Tenant manifests, looked up by API key.

Sources (one vocabulary, `fathom.api.tenant.TenantManifest`):
- `--tenants FILE`: a YAML stream of Tenant manifests exactly as applied to Kubernetes,
  keys given as `{sha256: <hex>}`;
- the operator's tenants Secret, either mounted as a directory (each data key a file of
  such manifests, as kubelet mounts it) or given as the Secret manifest itself
  (`kind: Secret`, `data` base64 / `stringData`).

`TenantSource` re-reads its path when a file's mtime or size changes (checked at most every
`poll_s`), so edits apply without a restart; a broken edit is logged and the last good
tenants stay in force. No tenants at all means open mode: every request is `OPEN_POLICY`.
"""

import base64
import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import yaml
from pydantic import ValidationError

from fathom.api.tenant import TenantManifest
from fathom.tenancy.keys import KeyIndex, bearer_key, digest, normalize_digest
from fathom.tenancy.tenant_policy import OPEN_POLICY, Limits, TenantPolicy

log = logging.getLogger(__name__)


class TenantConfigError(ValueError):
    """A tenants file or Secret that cannot be used; the message names the document and field."""


def policy_from_manifest(m: TenantManifest) -> TenantPolicy:
    m.spec.require_digests_only(f"Tenant {m.name!r}")
    lim = m.spec.limits
    return TenantPolicy(
        name=m.name,
        key_digests=tuple(m.spec.digests),
        role=m.spec.role,
        models=frozenset(m.spec.models),
        priority=m.spec.priority_class,
        weight=m.spec.weight,
        limits=Limits(
            requests_per_minute=lim.requests_per_minute,
            tokens_per_minute=lim.tokens_per_minute,
            max_concurrent_requests=lim.max_concurrent_requests,
            max_tokens_per_request=lim.max_tokens_per_request,
            monthly_token_budget=lim.monthly_token_budget,
        ),
    )


def _secret_texts(doc: dict, where: str) -> list[str]:
    """The tenants files (keys named *.yaml / *.yml, like the operator's `tenants.yaml`) inside a
    Secret manifest (`stringData` as is, `data` base64); other keys are not tenants files."""
    def is_file(key: str) -> bool:
        return key.endswith((".yaml", ".yml"))

    texts = [str(v) for k, v in (doc.get("stringData") or {}).items() if is_file(k)]
    for key, value in (doc.get("data") or {}).items():
        if not is_file(key):
            continue
        try:
            texts.append(base64.b64decode(value, validate=True).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise TenantConfigError(f"{where}: Secret data[{key!r}] is not base64 UTF-8 text ({e})") from None
    return texts


def parse_manifests(text: str, where: str) -> list[TenantManifest]:
    """Tenant manifests from a YAML stream; a Secret document is opened and read recursively."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise TenantConfigError(f"{where}: not valid YAML: {e}") from None
    out: list[TenantManifest] = []
    for i, doc in enumerate(docs):
        here = f"{where} document {i}"
        if isinstance(doc, dict) and doc.get("kind") == "Secret":
            for text_in in _secret_texts(doc, here):
                out.extend(parse_manifests(text_in, f"{here} (Secret)"))
            continue
        try:
            out.append(TenantManifest.model_validate(doc))
        except ValidationError as e:
            raise TenantConfigError(f"{here}: invalid Tenant: {_first_errors(e)}") from None
    return out


def _first_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


class TenantRegistry:
    """An immutable set of tenants with key lookup. Empty means open mode."""

    def __init__(self, tenants: list[TenantPolicy] = ()):
        by_name: dict[str, TenantPolicy] = {}
        owners: dict[str, str] = {}
        for t in tenants:
            if t.name in by_name:
                raise TenantConfigError(f"tenant {t.name!r} is defined twice")
            by_name[t.name] = t
            for d in t.key_digests:
                if d in owners:
                    raise TenantConfigError(f"tenants {owners[d]!r} and {t.name!r} share an API key")
                owners[d] = t.name
        self.tenants = by_name
        self._keys = KeyIndex(owners)

    @classmethod
    def from_manifests(cls, manifests: list[TenantManifest], where: str = "tenants") -> "TenantRegistry":
        try:
            return cls([policy_from_manifest(m) for m in manifests])
        except ValueError as e:
            raise TenantConfigError(f"{where}: {e}") from None

    @property
    def open(self) -> bool:
        return not self.tenants

    def authenticate(self, authorization: str | None) -> TenantPolicy | None:
        """The tenant of an `Authorization` header; OPEN_POLICY in open mode; None if refused."""
        if self.open:
            return OPEN_POLICY
        key = bearer_key(authorization)
        if key is None:
            return None
        name = self._keys.owner(key)
        return self.tenants.get(name) if name is not None else None

    def get(self, name: str) -> TenantPolicy | None:
        return OPEN_POLICY if self.open and name == OPEN_POLICY.name else self.tenants.get(name)


def _files(path: Path) -> list[Path]:
    """A file, or a Secret mounted as a directory: its visible regular files, sorted."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    return [path]


def load_registry(path: str | os.PathLike) -> TenantRegistry:
    """Read a tenants file, a Secret manifest, or a mounted Secret directory."""
    p = Path(path)
    if not p.exists():
        raise TenantConfigError(f"tenants file {str(p)!r} does not exist")
    manifests: list[TenantManifest] = []
    for f in _files(p):
        manifests.extend(parse_manifests(f.read_text(encoding="utf-8"), str(f)))
    return TenantRegistry.from_manifests(manifests, str(p))


def _signature(path: Path) -> tuple:
    try:
        return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in _files(path))
    except OSError:
        return ()


class TenantSource:
    """The current registry of a path, reloaded when the path changes (no restart needed).

    No path (None) means open mode. A path that does not exist yet also means open mode until
    it appears (the operator's tenants Secret is mounted as optional: no Tenant, no Secret);
    `fathom serve` checks a user-given file at start, so a typo fails there. A file that fails
    to load at start raises; a later broken edit is logged and the previous tenants stay.
    """

    def __init__(self, path: str | os.PathLike | None, poll_s: float = 1.0, fixed: TenantRegistry | None = None):
        self.path = Path(path) if path is not None else None
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._signature = _signature(self.path) if self.path else ()
        if fixed is not None:  # no file: these tenants, for good
            self._registry = fixed
            return
        present = self.path is not None and self.path.exists()
        self._registry = load_registry(self.path) if present else TenantRegistry()
        if self.path is not None and not present:
            log.warning("Tenants file %s does not exist (yet): the API is open until it appears.", self.path)
        elif self._registry.open:
            log.warning("No tenants configured: the API is open (no API keys, no per-tenant limits).")
        else:
            log.info("Loaded %d tenants from %s", len(self._registry.tenants), self.path)

    @classmethod
    def single_key(cls, key_digest: str) -> "TenantSource":
        """`fathom serve --api-key`: one key, held by the `default` admin tenant without limits
        (the open mode's tenant, now behind a key); nothing to reload."""
        return cls(None, fixed=TenantRegistry([replace(OPEN_POLICY, key_digests=(normalize_digest(key_digest),))]))

    def current(self) -> TenantRegistry:
        if self.path is not None and time.monotonic() - self._checked >= self.poll_s:
            self.reload()
        return self._registry

    def reload(self, force: bool = False) -> bool:
        """Re-read the path if it changed; returns whether a new registry is in force."""
        with self._lock:
            self._checked = time.monotonic()
            sig = _signature(self.path)
            if sig == self._signature and not force:
                return False
            self._signature = sig
            try:
                registry = load_registry(self.path)
            except (TenantConfigError, OSError) as e:
                log.error("Tenants not reloaded, keeping the previous ones: %s", e)
                return False
            self._registry = registry
            log.info("Reloaded %d tenants from %s", len(registry.tenants), self.path)
            return True


def tenant_manifest(name: str, api_keys: list[str], **spec) -> dict:
    """A Tenant manifest (dict, camelCase) for plaintext `api_keys`, which are stored hashed.

    `spec` takes the other TenantSpec fields in camelCase or snake_case; the result is
    validated, so `yaml.safe_dump_all([...])` of such dicts is a valid `--tenants` file.
    """
    doc = {
        "apiVersion": "fathom.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {"apiKeys": [{"sha256": digest(k)} for k in api_keys], **spec},
    }
    return TenantManifest.model_validate(doc).to_wire()


def describe_tenants(path: str | os.PathLike | None) -> str:
    """One line for the console at start: open mode, or how many tenants (file validated)."""
    if path is None:
        return "no --tenants: the API is open (no API keys, no per-tenant limits or metering by tenant)"
    registry = load_registry(path)
    if registry.open:
        return f"tenants file {path} has no tenants: the API is open (no API keys)"
    return f"{len(registry.tenants)} tenant(s) from {path} (API keys required; reloaded when the file changes)"
