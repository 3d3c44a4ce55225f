"""Command-line flags generated from the pydantic settings, so flags, YAML and specs stay one
vocabulary: every scalar field of `ServeSettings` and of its `engine` becomes `--kebab-name`.

Precedence: built-in defaults < `--config FILE` < flags. Errors name the flag or the file key.
"""

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from fathom.api.engine import EngineSettings
from fathom.api.serve import ServeSettings


class UsageError(Exception):
    """A bad flag or config file; the CLI prints it and exits with status 2."""


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


def _add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], dest_prefix: str) -> None:
    group = parser.add_argument_group(f"{model.__name__} ({model.__doc__.strip().splitlines()[0]})")
    for name, field in model.model_fields.items():
        typ, choices = _scalar_type(field.annotation)
        if typ is None:
            continue  # nested settings (pricing, engine) come from --config
        kwargs: dict[str, Any] = {"dest": dest_prefix + name, "default": argparse.SUPPRESS}
        default = field.get_default(call_default_factory=True)
        kwargs["help"] = f"{field.description} (default: {default})"
        if typ is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = typ
            kwargs["choices"] = choices
            kwargs["metavar"] = name.upper() if choices is None else None
        group.add_argument(_flag(name), **kwargs)


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", dest="config", metavar="FILE", default=None,
        help="YAML file of serve settings (the flags below, camelCase or snake_case; engine settings under `engine:`).",
    )
    _add_model_flags(parser, EngineSettings, "engine.")
    _add_model_flags(parser, ServeSettings, "serve.")


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
        if loc and loc[-1] in flags:
            where = flags[loc[-1]]
        elif loc:
            where = f"{source} key {'.'.join(loc)}"
        else:
            where = source
        lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Merge defaults, --config and flags into one validated ServeSettings."""
    base = _load_yaml(args.config) if args.config else {}
    source = f"--config {args.config}" if args.config else "settings"
    try:
        settings = ServeSettings.model_validate(base)
    except ValidationError as e:
        raise UsageError(_explain(e, {}, source)) from None
    engine_over = {k[7:]: v for k, v in vars(args).items() if k.startswith("engine.")}
    serve_over = {k[6:]: v for k, v in vars(args).items() if k.startswith("serve.")}
    merged = settings.model_dump()
    merged["engine"].update(engine_over)
    merged.update(serve_over)
    flags = {name: _flag(name) for name in (*engine_over, *serve_over)}
    try:
        return ServeSettings.model_validate(merged)
    except ValidationError as e:
        raise UsageError(_explain(e, flags, source)) from None
