"""The composition root: builds engines from `EngineSettings` (checkpoint dir, tokenizer, EOS
ids, executor, limits) and puts an `AsyncEngine` on the right core."""

import json
from pathlib import Path

from fathom.api.engine import EngineSettings
from fathom.engine.async_engine import AsyncEngine
from fathom.engine.engine_core import ThreadCore
from fathom.engine.executor import Executor
from fathom.engine.llm_engine import EngineConfig, LLMEngine
from fathom.engine.scheduling_policy import SchedulingPolicy
from fathom.engine.tokenizer import Tokenizer
from fathom.worker.in_process import InProcessExecutor
from fathom.worker.kv_budget import blocks_for, cache_spec, default_device, resolve_dtype
from fathom.worker.model_runner import ModelRunner


def start_async_engine(settings: EngineSettings, policy: SchedulingPolicy | None = None) -> AsyncEngine:
    """Load the model and start the step loop: W=1 in the engine core process (unless
    `settings.engine_core_process` is off: then on a thread here), W>1 on Ray rank workers
    driven from a thread here."""
    if settings.world_size == 1 and settings.engine_core_process:
        import torch

        from fathom.worker.core_process import ProcessCore

        core = ProcessCore(settings, policy, threads=torch.get_num_threads())
        return AsyncEngine(core, load_tokenizer(resolve_model_dir(settings)))
    engine = create_engine(settings, policy=policy)
    return AsyncEngine(ThreadCore(engine), engine.tokenizer)


def create_engine(settings: EngineSettings, executor: Executor | None = None,
                  policy: SchedulingPolicy | None = None) -> LLMEngine:
    """The engine for `settings`: W=1 runs in this process; W>1 (W = TP x D) on Ray rank workers."""
    model_dir = resolve_model_dir(settings)
    max_len = max_model_len_of(settings, model_dir)
    tokenizer = load_tokenizer(model_dir)
    config = EngineConfig(max_model_len=max_len, block_size=settings.block_size,
                          max_num_seqs=settings.max_num_seqs,
                          max_num_batched_tokens=settings.max_num_batched_tokens,
                          enable_prefix_caching=settings.enable_prefix_caching,
                          enable_chunked_prefill=settings.enable_chunked_prefill, seed=settings.seed,
                          data_parallel_size=settings.data_parallel_size,
                          num_speculative_tokens=settings.num_speculative_tokens)
    if executor is None:
        if settings.world_size == 1:
            executor = in_process_executor(model_dir, settings, max_len)
        else:
            from fathom.worker.ray_executor import RayExecutor  # Ray only when W > 1

            executor = RayExecutor(model_dir, settings, cache_spec(settings, max_len))
    return LLMEngine(config, executor, tokenizer, eos_token_ids(model_dir, tokenizer), policy)


def resolve_model_dir(settings: EngineSettings) -> Path:
    """The checkpoint directory; None means the built-in demo model (shipped in the package)."""
    if settings.model is None:
        from fathom.worker.demo_model import demo_model_dir

        return demo_model_dir()
    path = Path(settings.model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model directory {path} has no config.json")
    return path


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
    model = load_model(model_dir, ParallelContext.single(device), resolve_dtype(settings.dtype, device),
                       quantization=settings.quantization, mtp=settings.speculative_config is not None)
    spec = cache_spec(settings, max_model_len)
    return InProcessExecutor(ModelRunner(model, blocks_for(model, spec), spec.block_size, spec.dtype_for(model),
                                             model_dir=model_dir))


def _config_json(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())
