"""Load one rank's shard of a DeepSeek checkpoint directory.

Reads only ``*.safetensors`` (through ``model.safetensors.index.json`` when present) with lazy
``safe_open`` + ``get_slice``: a rank reads exactly the slices ``weights.sharding.plan`` assigns it,
never the whole model. FP8 weights are dequantised block by block to ``dtype``. Nothing shipped with
the checkpoint is executed (``auto_map`` is ignored) and nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from fathom.model.config import DeepseekConfig
from fathom.model.deepseek import DeepseekForCausalLM
from fathom.model.weights import fp8
from fathom.model.weights.sharding import Layout, Shard, plan
from fathom.parallel.context import ParallelContext
from fathom.telemetry.progress import shard_loaded

SCALE_SUFFIX = "_scale_inv"


def checkpoint_files(path: Path) -> dict[str, Path]:
    """{tensor name: safetensors file} from the index, or from every ``*.safetensors`` header."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' object")
        return {name: path / file for name, file in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path} (pickled checkpoints are never loaded)")
    out: dict[str, Path] = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            out.update((k, f) for k in st.keys())  # noqa: SIM118 (safe_open is not a dict)
    return out


def layout_for(config: DeepseekConfig, ctx: ParallelContext) -> Layout:
    return Layout(ctx.rank, ctx.world_size, ctx.ep_size, config.n_routed_experts or 0,
                  config.num_hidden_layers, config.vocab_size, config.tie_word_embeddings)  # fmt: skip


class _Files:
    """Lazily opened safetensors files, shared by all reads of one load."""

    def __init__(self, names: dict[str, Path]) -> None:
        self.names, self.open = names, {}

    def slice(self, name: str):
        f = self.names[name]
        if f not in self.open:
            if not f.is_file():
                raise FileNotFoundError(f"{f} (holding tensor {name!r}) is missing")
            self.open[f] = safe_open(f, framework="pt")
        return self.open[f].get_slice(name)


def read_shard(files: _Files, name: str, shard: Shard, dtype: torch.dtype) -> torch.Tensor:
    """The shard of checkpoint tensor ``name``, dequantised from FP8 when it has a scale."""
    sl = files.slice(name)
    shape = tuple(sl.get_shape())
    stop = shape[shard.dim] if shard.dim is not None and shard.stop is None else shard.stop
    if shard.dim is None:
        t = sl[:]
    elif shard.dim == 0:
        t = sl[shard.start : stop]
    else:
        t = sl[:, shard.start : stop]
    if name + SCALE_SUFFIX not in files.names:
        if t.dtype == torch.float8_e4m3fn:
            raise ValueError(f"tensor {name!r} is float8 but {name + SCALE_SUFFIX!r} is missing")
        return t.to(dtype)
    rows, cols = (0, shape[0]), (0, shape[1])
    if shard.dim == 0:
        rows = (shard.start, stop)
    elif shard.dim == 1:
        cols = (shard.start, stop)
    (br0, br1), (bc0, bc1) = fp8.block_range(*rows), fp8.block_range(*cols)
    scale = files.slice(name + SCALE_SUFFIX)[br0:br1, bc0:bc1]
    return fp8.dequantize(t, scale, rows, cols, dtype)


def load_model(
    path: str | Path,
    ctx: ParallelContext | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> DeepseekForCausalLM:
    """Build this rank's shard of the model in ``path`` and fill it from the checkpoint.

    Raises ValueError/FileNotFoundError naming a missing, unexpected or mis-shaped tensor.
    ``device`` defaults to ``ctx.device``.
    """
    path = Path(path)
    config = DeepseekConfig.from_pretrained(path)
    ctx = ctx or ParallelContext.single(device or "cpu")
    if device is not None and torch.device(device) != ctx.device:
        raise ValueError(f"device {device} differs from the parallel context's device {ctx.device}")
    model = DeepseekForCausalLM(config, ctx, dtype)
    names = checkpoint_files(path)
    files = _Files(names)
    shapes = [(n, tuple(files.slice(n).get_shape())) for n in names if not n.endswith(SCALE_SUFFIX)]
    wanted = plan(shapes, layout_for(config, ctx))
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(wanted))
    if missing:
        raise ValueError(f"checkpoint {path} lacks tensor(s) {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))  # fmt: skip
    by_file: dict[Path, list[tuple[str, str, Shard]]] = {}
    for ours, (name, shard) in wanted.items():
        by_file.setdefault(names[name], []).append((ours, name, shard))
    shard_loaded(0, len(by_file), ctx.rank)
    for i, f in enumerate(sorted(by_file)):  # file by file, so progress is per checkpoint shard
        for ours, name, shard in by_file[f]:
            if ours not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no place in a model with this config.json")
            t = read_shard(files, name, shard, params[ours].dtype if ours.endswith("correction_bias") else dtype)
            if t.shape != params[ours].shape:
                raise ValueError(f"tensor {name!r}: this rank expects shape {tuple(params[ours].shape)} "
                                 f"(of {ours}), checkpoint gives {tuple(t.shape)}")  # fmt: skip
            params[ours].data.copy_(t)
        shard_loaded(i + 1, len(by_file), ctx.rank)
    model.eval()
    return model
