"""TenancyGate in one process (LocalTenancyClient): statuses, headers, open mode, request caps."""

import io
import pickle
import sys

import pytest

from fathom.api.engine import Pricing
from fathom.api.openai_error import APIError
from fathom.api.serve import ServeSettings
from fathom.engine.sampling_params import SamplingParams
from fathom.serve.preprocess import EngineCall
from fathom.serve.protocol import ChatCompletionRequest, CompletionRequest
from fathom.serve.replica_tenancy import cap_calls
from fathom.tenancy import keys
from fathom.tenancy.admission import (
    LocalTenancyClient,
    RequestTenancy,
    TenancyError,
    completion_reservation,
    estimate_prompt_tokens,
)
from fathom.tenancy.gate import TenancyGate
from fathom.tenancy.registry import TenantSource, tenant_manifest

MODEL = "fathom-demo"


@pytest.fixture
def gate(tmp_path):
    import yaml

    f = tmp_path / "t.yaml"
    f.write_text(yaml.safe_dump_all([
        tenant_manifest("a", ["sk-a"], limits={"requestsPerMinute": 1}),
        tenant_manifest("free", ["sk-free"]),
        tenant_manifest("root", ["sk-root"], role="admin"),
    ]))
    return TenancyGate(TenantSource(f), LocalTenancyClient(), MODEL, Pricing(completion_per_million=1e6))


def completion(**kw):
    return CompletionRequest.model_validate({"model": MODEL, "prompt": "hello", **kw})


def test_authenticate_messages_never_contain_the_key(gate):
    with pytest.raises(APIError, match="didn't provide an API key") as e:
        gate.authenticate(None)
    assert e.value.status == 401
    with pytest.raises(APIError, match="Incorrect API key") as e:
        gate.authenticate("Bearer sk-secret-guess")
    assert "sk-secret-guess" not in e.value.message
    assert gate.authenticate("Bearer sk-a").name == "a"


async def test_refusal_is_429_with_headers_and_survives_pickling(gate):
    a = gate.authenticate("Bearer sk-a")
    grant = await gate.admit(a, "completion", completion())
    assert grant.lease and grant.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(TenancyError) as e:
        await gate.admit(a, "completion", completion())
    err = e.value
    assert (err.status, err.code, err.body()["error"]["type"]) == (429, "rate_limit_exceeded", "rate_limit_error")
    h = err.headers()
    assert int(h["Retry-After"]) >= 1 and h["x-ratelimit-limit-requests"] == "1" and "retry-after-ms" in h
    assert pickle.loads(pickle.dumps(err)).headers() == h


async def test_unlimited_tenant_needs_no_admission_and_release_meters_nothing(gate):
    free = gate.authenticate("Bearer sk-free")
    grant = await gate.admit(free, "completion", completion())
    assert grant.lease is None and grant.headers == {}
    assert grant.context.cache_salt == "tenant:free" and grant.context.engine_kwargs()["fairness_key"] == "free"
    gate.release(grant)
    assert await gate.client.usage("free") == []
    assert gate.settle(grant, 10, 4, 3) == pytest.approx(3.0)  # 3 completion tokens at 1 per token
    [row] = await gate.client.usage("free")
    assert (row["requests"], row["prompt_tokens"], row["cached_prompt_tokens"]) == (1, 10, 4)


async def test_usage_query_rules(gate):
    root, free = gate.authenticate("Bearer sk-root"), gate.authenticate("Bearer sk-free")
    assert (await gate.usage(free, {}))["tenant"] == "free"
    assert (await gate.usage(root, {"tenant": "free"}))["tenant"] == "free"
    assert (await gate.usage(root, {}))["tenant"] is None
    for query, param in (({"tenant": "root"}, "tenant"), ({"start_time": "x"}, "start_time"),
                         ({"end_time": "-1"}, "end_time"), ({"start_time": "5", "end_time": "5"}, "start_time")):
        who = free if param == "tenant" else root
        with pytest.raises(APIError) as e:
            await gate.usage(who, query)
        assert e.value.param == param


async def test_open_mode_admits_everyone_as_default_admin():
    gate = TenancyGate(TenantSource(None), LocalTenancyClient(), MODEL)
    t = gate.authenticate(None)
    assert (t.name, t.is_admin, gate.open) == ("default", True, True)
    assert (await gate.admit(t, "completion", completion())).lease is None


async def test_one_api_key_is_the_default_admin_behind_that_key():
    """`fathom serve --api-key`: the settings carry only the digest; that key, and no other, is in."""
    settings = ServeSettings(api_key_sha256=keys.digest("sk-only").upper())
    gate = TenancyGate.from_settings(settings)
    assert not gate.open
    tenant = gate.authenticate("Bearer sk-only")
    assert (tenant.name, tenant.role, tenant.limits.requests_per_minute) == ("default", "admin", None)
    for header in (None, "Bearer sk-other", "sk-only"):
        with pytest.raises(APIError) as e:
            gate.authenticate(header)
        assert e.value.status == 401 and "sk-only" not in e.value.message
    grant = await gate.admit(tenant, "completion", completion())
    gate.release(grant)


def test_prompt_estimate_and_reservation():
    chat = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "héllo"}], "max_tokens": 5, "n": 2})
    assert estimate_prompt_tokens("chat", chat) == len("héllo".encode()) + 8
    assert completion_reservation("chat", chat) == 10
    ids = completion(prompt=[[1, 2, 3], [4, 5]], max_tokens=7)
    assert estimate_prompt_tokens("completion", ids) == 5
    assert completion_reservation("completion", ids) == 14


def test_cap_calls_limits_prompt_plus_max_tokens():
    ctx = RequestTenancy("a", 0, 1.0, "tenant:a", max_total_tokens=10)
    call = EngineCall([1, 2, 3], "abc", SamplingParams(), 0)
    [capped] = cap_calls(ctx, [call])
    assert capped.params.max_tokens == 7
    assert cap_calls(ctx, [EngineCall([1, 2, 3], "abc", SamplingParams(max_tokens=7), 0)])[0].params.max_tokens == 7
    for ids, mt in (([1] * 10, None), ([1, 2, 3], 8)):
        with pytest.raises(APIError, match="at most 10 tokens per request") as e:
            cap_calls(ctx, [EngineCall(ids, "", SamplingParams(max_tokens=mt), 0)])
        assert (e.value.status, e.value.param) == (400, "max_tokens")
    assert cap_calls(RequestTenancy("a", 0, 1.0, "s"), [call]) == [call]


def test_key_tool_hashes_stdin_and_makes_keys(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("sk-a\n\nsk-b\n"))
    assert keys.main(["--stdin"]) == 0
    assert capsys.readouterr().out.split() == [keys.digest("sk-a"), keys.digest("sk-b")]
    assert keys.main(["--new"]) == 0
    key_line, digest_line = capsys.readouterr().out.splitlines()
    assert keys.digest(key_line.split()[1]) == digest_line.split()[1]
    assert keys.main(["sk-on-the-command-line"]) == 2
    assert keys.main([]) == 2  # reading stdin is asked for, never implied
    assert "one of the arguments --new --stdin is required" in capsys.readouterr().err
    assert keys.main(["--help"]) == 0
    assert "--stdin" in capsys.readouterr().out


async def test_unreachable_shared_state_fails_closed_with_503(gate):
    from fathom.tenancy.actor import TenancyUnavailable

    class Down(LocalTenancyClient):
        async def admit(self, *args):
            raise TenancyUnavailable("tenancy state unreachable: ActorDiedError")

    gate.client = Down()
    with pytest.raises(APIError) as e:
        await gate.admit(gate.authenticate("Bearer sk-a"), "completion", completion())
    assert (e.value.status, e.value.code, e.value.headers()["Retry-After"]) == (503, "tenancy_unavailable", "1")
