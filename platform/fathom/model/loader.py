"""Load one rank's shard of a DeepSeek checkpoint directory.

Reads only ``*.safetensors`` (through ``model.safetensors.index.json`` when present) with lazy
``safe_open`` + ``get_slice``: a rank reads exactly the slices ``weights.sharding.plan`` assigns it,
never the whole model. FP8 weights stay FP8 in memory with their block scales gathered onto the
rank's local grid (``weights.fp8``), or, with ``quantization='none'``, are dequantised block by
block to ``dtype``. Nothing shipped with the checkpoint is executed (``auto_map`` is ignored) and
nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from fathom.api.memory_plan import fp8_resident
from fathom.model.config import DeepseekConfig
from fathom.model.deepseek import DeepseekForCausalLM
from fathom.model.weights import fp8
from fathom.model.weights.sharding import Layout, Shard, plan, sources
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


def layout_for(config: DeepseekConfig, ctx: ParallelContext, mtp: bool = False) -> Layout:
    return Layout(ctx, config.n_routed_experts or 0, config.num_hidden_layers, config.vocab_size,
                  config.tie_word_embeddings, config.num_hidden_layers if mtp else None)  # fmt: skip


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


def _raw_slice(files: _Files, name: str, shard: Shard) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """(the shard of checkpoint tensor ``name`` as stored, its row range, its col range in the tensor)."""
    sl = files.slice(name)
    shape = tuple(sl.get_shape())
    stop = shape[shard.dim] if shard.dim is not None and shard.stop is None else shard.stop
    if shard.dim is None:
        t = sl[:]
    elif shard.dim == 0:
        t = sl[shard.start : stop]
    else:
        t = sl[:, shard.start : stop]
    rows, cols = (0, shape[0]), (0, shape[-1])
    if shard.dim == 0:
        rows = (shard.start, stop)
    elif shard.dim == 1:
        cols = (shard.start, stop)
    return t, rows, cols


def _scale_blocks(files: _Files, name: str, rows: tuple[int, int], cols: tuple[int, int]):
    """(the checkpoint scale blocks covering W[rows, cols], index of the first block row and col)."""
    (br0, br1), (bc0, bc1) = fp8.block_range(*rows), fp8.block_range(*cols)
    return files.slice(name + SCALE_SUFFIX)[br0:br1, bc0:bc1], (br0, bc0)


def read_shard(files: _Files, name: str, shard: Shard, dtype: torch.dtype) -> torch.Tensor:
    """The shard of checkpoint tensor ``name``, dequantised from FP8 when it has a scale."""
    t, rows, cols = _raw_slice(files, name, shard)
    if name + SCALE_SUFFIX not in files.names:
        if t.dtype == fp8.FP8:
            raise ValueError(f"tensor {name!r} is float8 but {name + SCALE_SUFFIX!r} is missing")
        return t.to(dtype)
    scale, _ = _scale_blocks(files, name, rows, cols)
    return fp8.dequantize(t, scale, rows, cols, dtype)


def read_shard_fp8(files: _Files, name: str, shard: Shard, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The shard of checkpoint tensor ``name`` FP8-resident: (fp8 values, float32 scales over the local
    ``block`` grid). An FP8 tensor keeps its bytes and its scales are gathered onto the local grid
    (exact); a bf16/fp32 one is quantised here, block by local block (``--quantization fp8``)."""
    t, rows, cols = _raw_slice(files, name, shard)
    if name + SCALE_SUFFIX in files.names:
        if t.dtype != fp8.FP8:
            raise ValueError(f"tensor {name!r} has a {SCALE_SUFFIX} but is {t.dtype}, not float8_e4m3fn")
        scale, first = _scale_blocks(files, name, rows, cols)
        return t, fp8.local_scales(scale, first, (rows[0], cols[0]), tuple(t.shape), block)
    if t.dtype == fp8.FP8:
        raise ValueError(f"tensor {name!r} is float8 but {name + SCALE_SUFFIX!r} is missing")
    return fp8.quantize(t, block)


def _check_shape(name: str, shard: Shard, want: torch.Tensor, got: torch.Tensor) -> None:
    if got.shape != want.shape:
        where = shard.slot.name if shard.slot.index is None else f"{shard.slot.name}[{shard.slot.index}]"
        raise ValueError(f"tensor {name!r}: this rank expects shape {tuple(want.shape)} (of {where}), "
                         f"checkpoint gives {tuple(got.shape)}")  # fmt: skip


def fill(dest: torch.Tensor, files: _Files, name: str, shard: Shard, dtype: torch.dtype) -> None:
    """Copy ``shard`` of checkpoint tensor ``name`` into ``dest`` (the view of its slot), in ``dtype``
    (gate correction biases keep the parameter's dtype)."""
    keep = shard.slot.name.endswith("correction_bias")
    t = read_shard(files, name, shard, dest.dtype if keep else dtype)
    _check_shape(name, shard, dest, t)
    dest.copy_(t)


def fill_fp8(dest: torch.Tensor, dest_scale: torch.Tensor, block: tuple[int, int], files: _Files, name: str,
             shard: Shard) -> None:  # fmt: skip
    """Copy ``shard`` of checkpoint tensor ``name`` FP8-resident into ``dest`` and its scales into
    ``dest_scale`` (the views of its slot in the weight and in its ``*_scale_inv``)."""
    q, scale = read_shard_fp8(files, name, shard, block)
    _check_shape(name, shard, dest, q)
    _check_shape(name + SCALE_SUFFIX, shard, dest_scale, scale)
    dest.copy_(q)
    dest_scale.copy_(scale)


def fp8_block_of(model: torch.nn.Module, param: str) -> tuple[int, int]:
    """The local scale block of FP8-resident parameter ``param`` (a Linear's ``weight``, or a routed
    expert stack ``w13`` / ``w2``), as its module declared it."""
    owner, leaf = param.rsplit(".", 1)
    module = model.get_submodule(owner)
    return module.fp8_block if leaf == "weight" else getattr(module, f"{leaf}_block")


def build_model(config: DeepseekConfig, ctx: ParallelContext, dtype: torch.dtype,
                quantization: str = "auto", mtp: str | None = None) -> DeepseekForCausalLM:  # fmt: skip
    """This rank's empty model with the loader's format decisions (``fp8_resident``): what
    ``load_model`` fills, and what the memory planner builds on the meta device."""
    return DeepseekForCausalLM(config, ctx, dtype, fp8_resident(config.fp8, quantization), mtp)


def mtp_kind(config: DeepseekConfig, names: dict[str, Path]) -> str:
    """How the checkpoint's first MTP module reads embeddings: its own ``embed_tokens`` if it has
    one, else the model's. Raises ValueError if the checkpoint has no MTP module."""
    mtp = f"model.layers.{config.num_hidden_layers}."
    if config.num_nextn_predict_layers < 1 or mtp + "eh_proj.weight" not in names:
        raise ValueError("speculative decoding with MTP needs a checkpoint with an MTP module (config.json "
                         f"num_nextn_predict_layers >= 1 and its tensors, {mtp}eh_proj.weight, ...); this one has none")
    own = mtp + "embed_tokens.weight" in names
    return "own_embedding" if own else "shared_embedding"


def load_model(
    path: str | Path,
    ctx: ParallelContext | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    quantization: str = "auto",
    mtp: bool = False,
) -> DeepseekForCausalLM:
    """Build this rank's shard of the model in ``path`` and fill it from the checkpoint.

    ``quantization`` (``fathom.api.memory_plan.fp8_resident``): 'auto' keeps an FP8 checkpoint's
    projections FP8-resident and loads any other in ``dtype``; 'fp8' also quantises a bf16/fp32
    checkpoint's projections at load; 'none' dequantises FP8 weights to ``dtype``.
    Raises ValueError/FileNotFoundError naming a missing, unexpected or mis-shaped tensor.
    ``device`` defaults to ``ctx.device``. ``mtp``: also load the checkpoint's first MTP module
    (``fathom.model.mtp``, the draft model of speculative decoding); other MTP modules are skipped.
    """
    path = Path(path)
    config = DeepseekConfig.from_pretrained(path)
    ctx = ctx or ParallelContext.single(device or "cpu")
    if device is not None and torch.device(device) != ctx.device:
        raise ValueError(f"device {device} differs from the parallel context's device {ctx.device}")
    names = checkpoint_files(path)
    model = build_model(config, ctx, dtype, quantization, mtp_kind(config, names) if mtp else None)
    files = _Files(names)
    shapes = [(n, tuple(files.slice(n).get_shape())) for n in names if not n.endswith(SCALE_SUFFIX)]
    layout = layout_for(config, ctx, mtp)
    wanted = plan(shapes, layout)
    params = dict(model.named_parameters())
    needed = {slot: name for ours in params for slot, name in sources(ours, layout).items()}
    missing = sorted(name for slot, name in needed.items() if slot not in wanted)
    if missing:
        raise ValueError(f"checkpoint {path} lacks tensor(s) {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))  # fmt: skip
    scales = {n: b for n, b in model.named_buffers() if n.endswith(SCALE_SUFFIX)}
    by_file: dict[Path, list] = {}
    for slot, (name, shard) in wanted.items():
        if slot not in needed:
            raise ValueError(f"checkpoint tensor {name!r} has no place in a model with this config.json")
        by_file.setdefault(names[name], []).append((slot, name, shard))
    shard_loaded(0, len(by_file), ctx.rank)
    with torch.no_grad():
        for i, f in enumerate(sorted(by_file)):  # file by file, so progress is per checkpoint shard
            for slot, name, shard in by_file[f]:
                dest = slot.view(params[slot.name])
                if slot.name + SCALE_SUFFIX in scales:
                    scale = slot.view(scales[slot.name + SCALE_SUFFIX])
                    fill_fp8(dest, scale, fp8_block_of(model, slot.name), files, name, shard)
                else:
                    fill(dest, files, name, shard, dtype)
            shard_loaded(i + 1, len(by_file), ctx.rank)
    model.eval()
    return model
