import json

import pytest

from fathom.model.config import DeepseekConfig

# config.json of deepseek-ai/DeepSeek-V3 (published spelling), trimmed only of nothing.
V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"}, "bos_token_id": 0,
    "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
    "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
    "max_position_embeddings": 163840, "model_type": "deepseek_v3", "moe_intermediate_size": 2048,
    "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1,
    "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
    "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128, "vocab_size": 129280,
}  # fmt: skip
V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001, "bos_token_id": 100000, "eos_token_id": 100001, "first_k_dense_replace": 1,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 10944,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v2",
    "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
    "n_shared_experts": 2, "norm_topk_prob": False, "num_attention_heads": 16, "num_experts_per_tok": 6,
    "num_hidden_layers": 27, "num_key_value_heads": 16, "pretraining_tp": 1, "q_lora_rank": None,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16",
    "transformers_version": "4.39.3", "use_cache": True, "v_head_dim": 128, "vocab_size": 102400,
}  # fmt: skip


def test_published_v3_config():
    c = DeepseekConfig.from_dict(V3)
    assert c.routing_method == "noaux_tc" and c.gate_scoring == "sigmoid" and c.fp8
    assert (
        c.rope.rope_type == "yarn" and c.rope.factor == 40 and c.rope.original_max_position_embeddings == 4096
    )
    assert [c.is_moe_layer(i) for i in range(4)] == [False, False, False, True]
    assert c.num_nextn_predict_layers == 1


def test_published_v2_lite_config_defaults_to_softmax_greedy():
    c = DeepseekConfig.from_dict(V2_LITE)
    assert c.q_lora_rank is None and c.gate_scoring == "softmax" and c.routing_method == "greedy"
    assert c.rope.mscale_all_dim == 0.707 and not c.fp8


def test_transformers5_spelling_and_v3_defaults(tmp_path):
    d = {
        k: v for k, v in V3.items() if k not in ("rope_scaling", "rope_theta", "topk_method", "scoring_func")
    }
    d["rope_parameters"] = {
        "rope_type": "yarn",
        "rope_theta": 50000.0,
        "factor": 8.0,
        "original_max_position_embeddings": 4096,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    }
    d.update(dtype="float32", head_dim=64, qk_head_dim=192)
    (tmp_path / "config.json").write_text(json.dumps(d))
    c = DeepseekConfig.from_pretrained(tmp_path)
    assert c.rope.rope_theta == 50000.0 and c.rope.factor == 8.0
    assert c.routing_method == "noaux_tc" and c.gate_scoring == "sigmoid" and c.rope_interleave


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"frobnicate": 1}, "'frobnicate'"),
        ({"num_key_value_heads": 8}, "num_key_value_heads"),
        ({"topk_group": 9}, "topk_group"),
        ({"n_group": 7}, "n_group"),
        ({"num_experts_per_tok": 0}, "num_experts_per_tok"),
        ({"topk_method": "best"}, "topk_method"),
        ({"scoring_func": "relu"}, "scoring_func"),
        ({"qk_head_dim": 100}, "qk_head_dim"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_scaling": {"type": "yarn", "factor": 4, "warp": 2}}, "rope_scaling.warp"),
        ({"rope_scaling": {"type": "dynamic", "factor": 4}}, "rope_scaling.rope_type"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config.quant_method"),
        ({"model_type": "llama"}, "model_type"),
        ({"hidden_size": "big"}, "hidden_size"),
    ],
)
def test_bad_configs_name_the_field(change, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        DeepseekConfig.from_dict({**V3, **change})


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        DeepseekConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        DeepseekConfig.from_pretrained(tmp_path)
