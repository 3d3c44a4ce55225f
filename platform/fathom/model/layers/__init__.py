"""Building blocks of the DeepSeek architecture (RMSNorm, rotary/YaRN, parallel linears, MLA, MoE)."""
