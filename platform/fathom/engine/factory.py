"""Builds an engine from `EngineSettings`: checkpoint dir, tokenizer, EOS ids, executor, limits."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fathom.api.engine import EngineSettings
from fathom.engine.executor import Executor, InProcessExecutor, num_kv_blocks, resolve_dtype
from fathom.engine.llm_engine import EngineConfig, LLMEngine
from fathom.engine.model_runner import ModelRunner
from fathom.engine.policy import SchedulingPolicy
from fathom.engine.tokenizer import Tokenizer


def resolve_model_dir(settings: EngineSettings) -> Path:
    """The checkpoint directory; None means the built-in demo checkpoint (written on first use)."""
    if settings.model is None:
        from fathom.model.demo import demo_checkpoint_dir

        return Path(demo_checkpoint_dir())
    path = Path(settings.model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model directory {path} has no config.json")
    return path


def default_device() -> torch.device:
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class CacheSpec:
    """Everything a rank needs to size and allocate its share of the KV cache (picklable)."""

    block_size: int
    kv_cache_memory: int | None
    memory_fraction: float
    max_useful_tokens: int
    gpu_memory_utilization: float = 0.9


def cache_spec(settings: EngineSettings, max_model_len: int) -> CacheSpec:
    return CacheSpec(settings.block_size, settings.kv_cache_memory, settings.kv_cache_memory_fraction,
                     settings.max_num_seqs * max_model_len, settings.gpu_memory_utilization)


def blocks_for(model, spec: CacheSpec) -> int:
    from fathom.model.kv_cache import bytes_per_token

    return num_kv_blocks(bytes_per_token(model.config, model.dtype), spec.block_size, model.ctx.device,
                         kv_cache_memory=spec.kv_cache_memory, memory_fraction=spec.memory_fraction,
                         max_useful_tokens=spec.max_useful_tokens,
                         gpu_memory_utilization=spec.gpu_memory_utilization)


def max_model_len_of(settings: EngineSettings, model_dir: Path) -> int:
    limit = _config_json(model_dir).get("max_position_embeddings")
    if settings.max_model_len is None:
        if not limit:
            raise ValueError(f"{model_dir}/config.json has no max_position_embeddings; set max_model_len")
        return int(limit)
    if limit and settings.max_model_len > limit:
        raise ValueError(f"max_model_len ({settings.max_model_len}) exceeds the checkpoint's "
                         f"max_position_embeddings ({limit})")
    return settings.max_model_len


def eos_token_ids(model_dir: Path, tokenizer: Tokenizer | None) -> set[int]:
    eos = _config_json(model_dir).get("eos_token_id")
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def load_tokenizer(model_dir: Path) -> Tokenizer | None:
    """The checkpoint's tokenizer (tokenizer.json), or None: the engine then takes and returns ids only."""
    return Tokenizer.from_pretrained(model_dir) if (model_dir / "tokenizer.json").is_file() else None


def in_process_executor(model_dir: Path, settings: EngineSettings, max_model_len: int) -> InProcessExecutor:
    from fathom.model.loader import load_model
    from fathom.parallel.context import ParallelContext

    device = default_device()
    model = load_model(model_dir, ParallelContext.single(device), resolve_dtype(settings.dtype, device))
    spec = cache_spec(settings, max_model_len)
    return InProcessExecutor(ModelRunner(model, blocks_for(model, spec), spec.block_size))


def create_engine(settings: EngineSettings, executor: Executor | None = None,
                  policy: SchedulingPolicy | None = None) -> LLMEngine:
    """The engine for `settings`: W=1 runs in this process; W>1 on Ray rank workers."""
    model_dir = resolve_model_dir(settings)
    max_len = max_model_len_of(settings, model_dir)
    tokenizer = load_tokenizer(model_dir)
    config = EngineConfig(max_model_len=max_len, block_size=settings.block_size,
                          max_num_seqs=settings.max_num_seqs,
                          max_num_batched_tokens=settings.max_num_batched_tokens,
                          enable_prefix_caching=settings.enable_prefix_caching,
                          enable_chunked_prefill=settings.enable_chunked_prefill, seed=settings.seed)
    if executor is None:
        if settings.tensor_parallel_size == 1:
            executor = in_process_executor(model_dir, settings, max_len)
        else:
            from fathom.parallel.executor import RayExecutor  # Ray only when W > 1

            executor = RayExecutor(model_dir, settings, cache_spec(settings, max_len))
    return LLMEngine(config, executor, tokenizer, eos_token_ids(model_dir, tokenizer), policy)


def _config_json(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())
