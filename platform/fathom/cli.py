"""`fathom` command line.

    fathom serve                        # demo model on http://127.0.0.1:8000, local Ray
    fathom serve deepseek-ai/DeepSeek-V2-Lite --tensor-parallel-size 2 --expert-parallel-size 2
    fathom serve /ckpt/DeepSeek-V3 --config serve.yaml --port 8080
    fathom serve --address auto         # join a running Ray cluster
    fathom plan --model DIR --gpu h200 --num-gpus 8   # does it fit? (also: fathom serve --dry-run)

Flags are generated from `fathom.api.serve.ServeSettings` (see `fathom.serve.flags`). What can be
checked without Ray is checked first (`fathom.serve.preflight`: the model, its config, whether
the shape fits the machine); the heavy imports (ray, torch) happen only after that, so `--help`,
flag errors and a bad model fail at once, in one line.
"""

import argparse
import os
import sys

import fathom
from fathom.serve.flags import UsageError, add_serve_flags, settings_from_args
from fathom.serve.plan_command import add_plan_parser, plan_settings, run_plan

SERVE_USAGE = "fathom serve [MODEL] [options]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fathom", description="Serve DeepSeek-style MoE models.")
    parser.add_argument("--version", action="version", version=f"fathom {fathom.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve", usage=SERVE_USAGE,
        help="Start an OpenAI-compatible server (default: the demo model on 127.0.0.1:8000).",
        description="Serve a DeepSeek-V2/V3/R1 model behind an OpenAI-compatible API on Ray Serve "
                    "(MODEL omitted: the built-in demo model). Ctrl-C or SIGTERM drains and stops it.",
    )
    serve.add_argument("--version", action="version", version=f"fathom {fathom.__version__}")
    add_serve_flags(serve)
    serve.add_argument("--dry-run", action="store_true", help="Print the memory plan (fathom plan) and exit.")
    add_plan_parser(sub)
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "plan":
        if extra:
            _subparser(parser, "plan").error(f"unrecognized arguments: {' '.join(extra)}")
        return run_plan(args)
    serve = _subparser(parser, args.command)
    try:
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        settings = settings_from_args(args)
        if args.dry_run:  # a plan for the given shape, whatever this machine has
            return plan_settings(settings.engine)
        from fathom.serve.preflight import PreflightError, preflight  # no ray, no torch

        try:
            settings = preflight(settings)
        except PreflightError as e:
            print(f"fathom serve: error: {e}", file=sys.stderr)
            return 1
    except UsageError as e:
        serve.print_usage(sys.stderr)
        print(f"fathom {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fathom serve: interrupted", file=sys.stderr)
        return 130
    from fathom.serve.launch import serve_forever  # ray, torch: only now

    code = serve_forever(settings)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # Ray has stopped: skip the interpreter's teardown of Ray's and torch's modules (~1 s)


if __name__ == "__main__":
    sys.exit(main())
