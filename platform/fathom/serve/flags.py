"""Command-line flags generated from the pydantic settings, so flags, YAML and specs stay one
vocabulary: every scalar field of `ServeSettings` and of its `engine` becomes `--kebab-name`.

`fathom serve --help` lists the flags most runs need first (in `COMMON`, the order vLLM users
know), then the rest of the engine's and the server's. Besides the fields: `MODEL` (positional,
as `vllm serve MODEL`; `--model` too), `--config FILE` and `--api-key KEY` (hashed here: only
its SHA-256 digest goes into the settings).

Precedence: built-in defaults < `--config FILE` < flags. Errors name the flag or the file key.
"""

import argparse
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from fathom.api.engine import EngineSettings
from fathom.api.serve import ServeSettings
from fathom.api.tenant import hash_api_key

API_KEY_ENV = "FATHOM_API_KEY"  # as vLLM's VLLM_API_KEY
# The flags most runs need, shown first, in this order (CLI-only ones: `config`, `api_key`).
COMMON = ("model", "served_model_name", "host", "port", "tensor_parallel_size", "expert_parallel_size",
          "num_replicas", "dtype", "max_model_len", "max_num_seqs", "gpu_memory_utilization", "api_key",
          "tenants", "config", "address")
METAVARS = {"model": "MODEL", "served_model_name": "NAME", "host": "HOST", "address": "ADDRESS", "tenants": "FILE",
            "max_request_body_bytes": "BYTES", "kv_cache_memory": "BYTES", "api_key_sha256": "HEX"}
TYPE_METAVARS = {int: "N", float: "X", str: "TEXT"}
# Nested engine settings as JSON flags, spelled as vLLM's.
JSON_FLAGS = {
    "--speculative-config": ("engine.speculative_config",
                             'Speculative decoding (vLLM\'s): {"method":"mtp","num_speculative_tokens":K}'),
    "--eplb-config": ("engine.eplb", 'EPLB (W > 1): {"num_redundant_experts":N,"step_interval":STEPS}'),
}


class UsageError(Exception):
    """A bad flag or config file; the CLI prints it with the usage and exits with status 2."""


def _scalar_type(annotation: Any) -> tuple[type | None, list | None]:
    """(python type, choices) of a scalar field annotation; (None, None) if not a scalar."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return _scalar_type(non_none[0]) if len(non_none) == 1 else (None, None)
    if typing.get_origin(annotation) is Literal:
        return type(args[0]), list(args)
    if annotation in (int, float, str, bool):
        return annotation, None
    return None, None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help(description: str, default: Any) -> str:
    """The field's description, with its default unless it has none (the description says
    what unset means) or it is a switch (argparse shows --x/--no-x)."""
    text = description.replace("%", "%%")
    if default is None or isinstance(default, bool):
        return text + (f" (default: {'on' if default else 'off'})" if isinstance(default, bool) else "")
    return f"{text} (default: {default})"


def _field_flag(group, name: str, field, dest: str) -> None:
    typ, choices = _scalar_type(field.annotation)
    default = field.get_default(call_default_factory=True)
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": _help(field.description, default)}
    if typ is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = typ
        kwargs["choices"] = choices
        kwargs["metavar"] = None if choices else METAVARS.get(name, TYPE_METAVARS[typ])
    group.add_argument(_flag(name), **kwargs)


def _scalar_fields(model: type[BaseModel], prefix: str) -> dict[str, tuple[Any, str]]:
    """{field name: (field, argparse dest)} of the fields that are flags (nested settings such
    as `pricing`, and fields marked `flag: False` for deployments, come from --config only)."""
    return {name: (field, prefix + name) for name, field in model.model_fields.items()
            if _scalar_type(field.annotation)[0] is not None and (field.json_schema_extra or {}).get("flag", True)}


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_arg", nargs="?", metavar="MODEL", default=None,
                        help="Checkpoint directory or Hugging Face hub id (org/name); omitted: the built-in demo model.")
    engine = _scalar_fields(EngineSettings, "engine.")
    serve = _scalar_fields(ServeSettings, "serve.")
    common = parser.add_argument_group("common options")
    for name in COMMON:
        if name == "config":
            common.add_argument("--config", dest="config", metavar="FILE", default=None,
                                help="YAML of these settings (engine ones under `engine:`); flags override it.")
        elif name == "api_key":
            common.add_argument("--api-key", dest="api_key", metavar="KEY", default=None,
                                help=f"Require `Authorization: Bearer KEY` on every request (default: ${API_KEY_ENV}); "
                                     "only its SHA-256 digest leaves this process.")
        elif name == "model":
            field, dest = engine["model"]
            common.add_argument("--model", dest=dest, metavar="MODEL", default=argparse.SUPPRESS,
                                help="The same as MODEL.")
        else:
            field, dest = engine.get(name) or serve[name]
            _field_flag(common, name, field, dest)
    for title, fields in (("engine options (each model instance)", engine),
                          ("server options (HTTP API, Ray Serve, tenants)", serve)):
        group = parser.add_argument_group(title)
        for name, (field, dest) in fields.items():
            if name not in COMMON:
                _field_flag(group, name, field, dest)
        if fields is engine:
            for flag, (dest, text) in JSON_FLAGS.items():
                group.add_argument(flag, dest=dest, metavar="JSON", type=_json_object, default=argparse.SUPPRESS,
                                   help=text)
            group.add_argument("--num-redundant-experts", dest="engine.eplb.num_redundant_experts", type=int,
                               metavar="N", default=argparse.SUPPRESS,
                               help="EPLB: extra expert slots for hot experts (--eplb-config's key).")


def _json_object(text: str) -> dict:
    """A flag's JSON object value (argparse reports the ValueError with the flag's name)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _load_yaml(path: str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"--config {path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _explain(exc: ValidationError, flags: dict[str, str], source: str) -> str:
    """One line per error, naming the flag when a flag set the field, else the file key."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        flag = next((i for i, p in enumerate(loc) if p in flags), None)
        if flag is not None:  # a key inside a flag's JSON value is named after the flag
            inner = ".".join(loc[flag + 1:])
            where = f"{flags[loc[flag]]} {inner}" if inner else flags[loc[flag]]
        elif loc and source != "settings":
            where = f"{source} key {'.'.join(loc)}"
        else:  # a rule over several fields (its message names them), or no config file
            where = source if source != "settings" and not loc else ""
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}" if where else msg)
    return "\n".join(lines)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Merge defaults, --config and flags into one validated ServeSettings."""
    base = _load_yaml(args.config) if getattr(args, "config", None) else {}
    source = f"--config {args.config}" if getattr(args, "config", None) else "settings"
    try:
        settings = ServeSettings.model_validate(base)
    except ValidationError as e:
        raise UsageError(_explain(e, {}, source)) from None
    engine_over = {k[7:]: v for k, v in vars(args).items() if k.startswith("engine.")}
    serve_over = {k[6:]: v for k, v in vars(args).items() if k.startswith("serve.")}
    flags = {name: _flag(name) for name in (*engine_over, *serve_over)}
    flags |= {dest[7:]: flag for flag, (dest, _) in JSON_FLAGS.items() if dest[7:] in engine_over}
    positional = getattr(args, "model_arg", None)
    if positional is not None:
        if engine_over.get("model", positional) != positional:
            raise UsageError(f"MODEL {positional} and --model {engine_over['model']} disagree; give one")
        engine_over["model"], flags["model"] = positional, "MODEL"
    api_key = getattr(args, "api_key", None)
    if api_key is None and os.environ.get(API_KEY_ENV):
        api_key = os.environ[API_KEY_ENV]
    if api_key is not None:
        if not api_key.strip():
            raise UsageError("--api-key: the key is empty")
        serve_over["api_key_sha256"] = hash_api_key(api_key)
        flags["api_key_sha256"] = "--api-key" if getattr(args, "api_key", None) is not None else f"${API_KEY_ENV}"
    merged = settings.model_dump()
    for key in [k for k in engine_over if "." in k]:  # a flag for one key of a nested setting
        outer, inner = key.split(".", 1)
        value = engine_over.pop(key)
        engine_over[outer] = {**engine_over.get(outer, merged["engine"][outer]), inner: value}
        flags.pop(key)
        flags[inner] = _flag(inner)
    merged["engine"].update(engine_over)
    merged.update(serve_over)
    try:
        return ServeSettings.model_validate(merged)
    except ValidationError as e:
        raise UsageError(_explain(e, flags, source)) from None
