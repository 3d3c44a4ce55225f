"""`python -m fathom_operator`: run the Fathom operator against the current cluster.

Credentials: the in-cluster service account, else the kubeconfig ($KUBECONFIG or ~/.kube/config).
All namespaces unless `--namespace` is given (repeatable; globs as kopf accepts them).
"""

import argparse
import asyncio
import logging
import sys

import kopf

from fathom_operator.autoscaler import DEFAULT_METRICS_URL
from fathom_operator.credentials import parse_ref
from fathom_operator.handlers import Config, build_registry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fathom_operator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--namespace", action="append", default=[],
                   help="watch only this namespace (repeatable); default: all namespaces")
    p.add_argument("--resync-seconds", type=float, default=30.0,
                   help="level-based resync of every ModelService (status, drifted children); default 30")
    p.add_argument("--tenant-resync-seconds", type=float, default=60.0,
                   help="re-read the Secrets Tenants reference (key rotation); default 60")
    p.add_argument("--metrics-url-template", default=DEFAULT_METRICS_URL,
                   help="where the autoscaler reads /metrics; fields {service} {namespace} {port} {name}")
    p.add_argument("--metrics-key-secret", default=None, metavar="NAMESPACE/NAME",
                   help="Secret holding the key the autoscaler sends to /metrics (data key `token`; made "
                        "with a random key when absent); its digest goes to every ModelService's pods")
    p.add_argument("--allow-host-path", action="store_true",
                   help="let ModelServices mount node directories (spec.model.hostPath); refused by default")
    p.add_argument("--liveness", default=None, metavar="URL",
                   help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--peering", default=None, metavar="NAME",
                   help="kopf peering name when running several operator replicas; default: standalone")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    for name in ("resync_seconds", "tenant_resync_seconds"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.metrics_key_secret is not None:
        try:
            parse_ref(args.metrics_key_secret)
        except ValueError as e:
            p.error(str(e))
    return args


async def run_operator(args: argparse.Namespace, *, stop_flag=None, ready_flag=None,
                       settings: kopf.OperatorSettings | None = None) -> None:
    """Run until `stop_flag` is set (or forever); embeddable in an existing event loop."""
    config = Config(resync_seconds=args.resync_seconds, tenant_resync_seconds=args.tenant_resync_seconds,
                    metrics_url_template=args.metrics_url_template, allow_host_path=args.allow_host_path,
                    metrics_key_secret=args.metrics_key_secret)
    settings = settings or kopf.OperatorSettings()
    if args.namespace and not any(set(ns) & set("*?[!,") for ns in args.namespace):
        # Exact namespaces need no namespace listing (nor its cluster-wide RBAC): skip the scan.
        settings.scanning.disabled = True
    await kopf.operator(
        registry=build_registry(config),
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=args.liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        settings=settings,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run_operator(args))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
