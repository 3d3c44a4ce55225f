"""`fathom` command line.

    fathom serve                       # demo model on http://127.0.0.1:8000, local Ray
    fathom serve --model DIR --tensor-parallel-size 2 --expert-parallel-size 2 --num-replicas 2
    fathom serve --config serve.yaml --port 8080
    fathom serve --address auto        # join a running Ray cluster

Flags are generated from `fathom.api.serve.ServeSettings` (see `fathom.serve.flags`); the heavy
imports (ray, torch) happen only once a command runs, so `--help` and flag errors are fast.
"""

import argparse
import sys

from fathom.serve.flags import UsageError, add_serve_flags, settings_from_args


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        settings = settings_from_args(args)
    except UsageError as e:
        print(f"fathom {args.command}: error: {e}", file=sys.stderr)
        return 2
    from fathom.serve.launch import serve_forever  # ray, torch: only now

    return serve_forever(settings)


if __name__ == "__main__":
    sys.exit(main())
