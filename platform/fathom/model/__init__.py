"""fathom.model: the DeepSeek-V2/V3/R1 runtime in torch, one rank's shard at a time.

* ``config``: ``DeepseekConfig`` parsed from a Hugging Face config.json;
* ``deepseek``: ``DeepseekForCausalLM`` (forward over a paged latent KV cache, compute_logits);
* ``layers``: RMSNorm, rotary/YaRN, parallel linears, vocab-parallel embedding/LM head, MLA, MoE;
* ``attention_metadata`` / ``kv_cache``: the step layout and the latent cache the engine builds;
* ``weights`` + ``loader``: the sharding table, FP8 dequantisation, safetensors slice loading;

See docs/sharding.md for the parallel layout.
"""
