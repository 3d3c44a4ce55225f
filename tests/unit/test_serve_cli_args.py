import pytest

import fathom
from fathom.api.tenant import hash_api_key
from fathom.cli import build_parser, main
from fathom.serve.flags import UsageError, settings_from_args


def settings(*argv):
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_no_flags_is_the_secure_demo_default():
    s = settings()
    assert (s.host, s.port, s.num_replicas, s.address) == ("127.0.0.1", 8000, 1, None)
    assert s.engine.model is None and s.model_name == "fathom-demo"


def test_design_contract_flags():
    s = settings(
        "--model", "/ckpt/DeepSeek-V3-tiny/", "--tensor-parallel-size", "2", "--expert-parallel-size", "2",
        "--num-replicas", "2", "--dtype", "bfloat16", "--host", "0.0.0.0", "--port", "8080",
        "--max-num-seqs", "8", "--max-model-len", "512", "--address", "auto", "--tenants", "t.yaml",
        "--no-enable-prefix-caching", "--reasoning-parser", "deepseek_r1", "--tool-call-parser", "deepseek_v31",
    )
    e = s.engine
    assert (e.tensor_parallel_size, e.expert_parallel_size, e.dtype) == (2, 2, "bfloat16")
    assert (e.max_num_seqs, e.max_model_len, e.enable_prefix_caching) == (8, 512, False)
    assert e.reasoning_parser == "deepseek_r1" and e.tool_call_parser == "deepseek_v31"
    assert (s.host, s.port, s.num_replicas, s.address, s.tenants) == ("0.0.0.0", 8080, 2, "auto", "t.yaml")
    assert s.model_name == "DeepSeek-V3-tiny"
    assert settings("--served-model-name", "ds", "--model", "/x").model_name == "ds"


def test_config_file_then_flags_override(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("port: 9000\nnumReplicas: 3\nengine:\n  tensorParallelSize: 4\n  max_num_seqs: 16\n")
    s = settings("--config", str(cfg), "--port", "9001")
    assert (s.port, s.num_replicas, s.engine.tensor_parallel_size, s.engine.max_num_seqs) == (9001, 3, 4, 16)


def test_bad_flag_value_names_the_flag():
    with pytest.raises(UsageError, match="--port: .*less than or equal to 65535"):
        settings("--port", "70000")
    with pytest.raises(UsageError, match="expert_parallel_size \\(3\\) must divide"):
        settings("--tensor-parallel-size", "4", "--expert-parallel-size", "3")
    with pytest.raises(SystemExit):
        settings("--dtype", "int3")  # argparse choices


def test_speculative_config_is_vllms_json(tmp_path, capsys):
    s = settings("--speculative-config", '{"method": "mtp", "num_speculative_tokens": 2}')
    assert (s.engine.speculative_config.method, s.engine.num_speculative_tokens) == ("mtp", 2)
    assert settings().engine.num_speculative_tokens == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text("engine:\n  speculativeConfig: {method: mtp, numSpeculativeTokens: 3}\n")
    assert settings("--config", str(cfg)).engine.num_speculative_tokens == 3
    with pytest.raises(UsageError, match="--speculative-config num_speculative_tokens: .*less than or equal to 3"):
        settings("--speculative-config", '{"method": "mtp", "num_speculative_tokens": 4}')
    with pytest.raises(UsageError, match="--speculative-config method: .*'mtp'"):
        settings("--speculative-config", '{"method": "eagle", "num_speculative_tokens": 1}')
    with pytest.raises(UsageError, match="--speculative-config model: Extra inputs"):
        settings("--speculative-config", '{"method": "mtp", "model": "x"}')
    with pytest.raises(SystemExit):
        settings("--speculative-config", "{method: mtp}")
    assert "not valid JSON" in capsys.readouterr().err


def test_bad_config_file_names_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("engine:\n  tensorParalelSize: 2\n")
    with pytest.raises(UsageError, match="c.yaml key engine.tensorParalelSize: Extra inputs"):
        settings("--config", str(cfg))
    cfg.write_text("- a list\n")
    with pytest.raises(UsageError, match="expected a mapping"):
        settings("--config", str(cfg))
    with pytest.raises(UsageError, match="cannot read"):
        settings("--config", str(tmp_path / "missing.yaml"))


def test_main_reports_usage_errors_with_the_serve_usage(capsys):
    assert main(["serve", "--max-ongoing-requests", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fathom serve [MODEL] [options]\nfathom serve: error:")
    assert "max_ongoing_requests (2)" in err and "Traceback" not in err
    assert main(["serve", "--tensor-parallel-size", "2", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fathom serve") and "unrecognized arguments: --no-such-flag" in err
    with pytest.raises(SystemExit) as e:
        main(["serve", "--port", "eighty"])  # argparse's own type error: the subcommand's usage too
    assert e.value.code == 2 and capsys.readouterr().err.startswith("usage: fathom serve [MODEL] [options]")


def test_model_is_positional_as_in_vllm_serve():
    assert settings("/ckpt/DeepSeek-V3").engine.model == "/ckpt/DeepSeek-V3"
    assert settings("org/name", "--port", "9000").engine.model == "org/name"
    assert settings("--model", "/x", "/x").engine.model == "/x"
    with pytest.raises(UsageError, match="MODEL /x and --model /y disagree"):
        settings("/x", "--model", "/y")


def test_api_key_is_kept_only_as_its_digest(monkeypatch):
    monkeypatch.delenv("FATHOM_API_KEY", raising=False)
    s = settings("--api-key", "sk-local")
    assert s.api_key_sha256 == hash_api_key("sk-local")
    assert "sk-local" not in s.model_dump_json()
    monkeypatch.setenv("FATHOM_API_KEY", "sk-from-env")
    assert settings().api_key_sha256 == hash_api_key("sk-from-env")
    assert settings("--api-key", "sk-flag").api_key_sha256 == hash_api_key("sk-flag")  # the flag wins
    with pytest.raises(UsageError, match="--api-key.*--tenants.*exclude each other"):
        settings("--tenants", "t.yaml")
    monkeypatch.delenv("FATHOM_API_KEY")
    with pytest.raises(UsageError, match="the key is empty"):
        settings("--api-key", " ")


def test_gpu_memory_utilization_is_vllms_fraction():
    assert settings().engine.gpu_memory_utilization == 0.9
    assert settings("--gpu-memory-utilization", "0.5").engine.gpu_memory_utilization == 0.5
    with pytest.raises(UsageError, match="--gpu-memory-utilization: .*less than or equal to 1"):
        settings("--gpu-memory-utilization", "1.5")


def test_version(capsys):
    for argv in (["--version"], ["serve", "--version"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fathom {fathom.__version__}"


def test_help_puts_common_flags_first_in_human_groups(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: fathom serve [MODEL] [options]")
    for flag in ("--tensor-parallel-size", "--max-queued-requests", "--config", "--served-model-name",
                 "--api-key", "--gpu-memory-utilization", "--max-num-batched-tokens"):
        assert flag in out
    titles = [line[:-1] for line in out.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles == ["positional arguments", "options", "common options", "engine options (each model instance)",
                      "server options (HTTP API, Ray Serve, tenants)"]
    common = out.split("common options:")[1].split("engine options")[0]
    order = [common.index(f) for f in ("--model", "--host", "--port", "--tensor-parallel-size", "--num-replicas",
                                       "--api-key", "--tenants", "--config")]
    assert order == sorted(order)
    for pythonism in ("None", "EngineSettings", "ServeSettings", "true", "false", "str |"):
        assert pythonism not in out, pythonism
    assert len(out.splitlines()) <= 100, "two screens at most"


def test_eplb_config_is_vllms_json():
    s = settings("--tensor-parallel-size", "2", "--eplb-config", '{"num_redundant_experts": 4, "step_interval": 100}')
    assert (s.engine.eplb.num_redundant_experts, s.engine.eplb.step_interval) == (4, 100)
    with pytest.raises(UsageError, match="--eplb-config num_redundant_experts: .*greater than or equal to 0"):
        settings("--tensor-parallel-size", "2", "--eplb-config", '{"num_redundant_experts": -1}')
    with pytest.raises(UsageError, match="eplb balances experts over ranks"):
        settings("--eplb-config", '{"num_redundant_experts": 2}')


def test_num_redundant_experts_sets_one_key_of_eplb():
    s = settings("--tensor-parallel-size", "2", "--eplb-config", '{"step_interval": 50}', "--num-redundant-experts", "3")
    assert (s.engine.eplb.num_redundant_experts, s.engine.eplb.step_interval) == (3, 50)
    with pytest.raises(UsageError, match="--num-redundant-experts: .*greater than or equal to 0"):
        settings("--tensor-parallel-size", "2", "--num-redundant-experts", "-1")
