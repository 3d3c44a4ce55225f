"""Checkpoint weights: the sharding table, FP8 block dequantisation, safetensors reading."""
