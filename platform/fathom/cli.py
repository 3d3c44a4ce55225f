"""`fathom` command line.

    fathom serve                       # demo model on http://127.0.0.1:8000, local Ray
    fathom serve --model DIR --tensor-parallel-size 2 --expert-parallel-size 2 --num-replicas 2
    fathom serve --config serve.yaml --port 8080
    fathom serve --address auto        # join a running Ray cluster
    fathom plan --model DIR --gpu h200 --num-gpus 8   # does it fit? (also: fathom serve --dry-run)

Flags are generated from `fathom.api.serve.ServeSettings` (see `fathom.serve.flags`); the heavy
imports (ray, torch) happen only once a command runs, so `--help` and flag errors are fast.
"""

import argparse
import sys

from fathom.serve.flags import UsageError, add_serve_flags, settings_from_args
from fathom.serve.plan_command import add_plan_parser, plan_settings, run_plan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fathom", description="Serve DeepSeek-style MoE models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="Start an OpenAI-compatible server (default: the demo model on 127.0.0.1:8000).",
        description="Start Ray Serve with the model and an OpenAI-compatible API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_serve_flags(serve)
    serve.add_argument("--dry-run", action="store_true", help="Print the memory plan (fathom plan) and exit.")
    add_plan_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "plan":
        return run_plan(args)
    try:
        settings = settings_from_args(args)
    except UsageError as e:
        print(f"fathom {args.command}: error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "dry_run", False):
        return plan_settings(settings.engine)
    from fathom.serve.launch import serve_forever  # ray, torch: only now

    return serve_forever(settings)


if __name__ == "__main__":
    sys.exit(main())
