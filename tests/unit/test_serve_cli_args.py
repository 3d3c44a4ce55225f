import pytest

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


def test_main_reports_usage_errors_without_traceback(capsys):
    assert main(["serve", "--max-ongoing-requests", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fathom serve: error:") and "max_ongoing_requests (2)" in err
    assert "Traceback" not in err


def test_help_lists_flags_from_the_settings(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--tensor-parallel-size", "--max-queued-requests", "--config", "--served-model-name"):
        assert flag in out
