#!/usr/bin/env bash
# Fathom end to end on a real cluster: kind (or k3d) + KubeRay + the Fathom operator, then two
# Tenants and the CPU demo ModelService, then OpenAI-compatible calls through the API Service.
#
#   examples/k8s/run-kind.sh                 # kind cluster "fathom", operator run from this checkout
#   RUNTIME=k3d examples/k8s/run-kind.sh     # k3d instead of kind
#   USE_CHART=1 examples/k8s/run-kind.sh     # install the operator with helm/fathom instead
#   BUILD_IMAGE=1 examples/k8s/run-kind.sh   # docker build the Fathom image and load it into the cluster
#   CLEANUP=1 examples/k8s/run-kind.sh       # delete the cluster at the end
#
# Needs: kubectl, helm, kind or k3d, curl, python with this project installed (pip install -e .).
set -euo pipefail

CLUSTER=${CLUSTER:-fathom}
RUNTIME=${RUNTIME:-kind}
NS=${NS:-fathom-demo}
IMAGE=${IMAGE:-ghcr.io/fathom-serve/fathom:0.1.0}
KUBERAY_VERSION=${KUBERAY_VERSION:-1.4.2}
PYTHON=${PYTHON:-python}
PORT=${PORT:-18000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PIDS=()

say() { printf '\n== %s\n' "$*"; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "run-kind.sh: '$1' is required but not on PATH" >&2; exit 1; }; }
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  if [ "${CLEANUP:-0}" = 1 ]; then
    say "deleting cluster $CLUSTER"
    if [ "$RUNTIME" = k3d ]; then k3d cluster delete "$CLUSTER"; else kind delete cluster --name "$CLUSTER"; fi
  fi
}
trap cleanup EXIT

need kubectl; need helm; need curl; need "$RUNTIME"
case "$RUNTIME" in kind|k3d) ;; *) echo "RUNTIME must be kind or k3d, not '$RUNTIME'" >&2; exit 2 ;; esac

say "cluster $CLUSTER ($RUNTIME)"
if [ "$RUNTIME" = k3d ]; then
  k3d cluster list "$CLUSTER" >/dev/null 2>&1 || k3d cluster create "$CLUSTER" --wait
else
  kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
fi

if [ "${BUILD_IMAGE:-0}" = 1 ]; then
  say "building $IMAGE"
  docker build -f "$ROOT/docker/platform.Dockerfile" -t "$IMAGE" "$ROOT"
  if [ "$RUNTIME" = k3d ]; then k3d image import "$IMAGE" -c "$CLUSTER"; else kind load docker-image "$IMAGE" --name "$CLUSTER"; fi
fi

say "KubeRay operator $KUBERAY_VERSION"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ >/dev/null 2>&1 || true
helm repo update kuberay >/dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  --namespace kuberay-system --create-namespace --wait

say "Fathom CRDs and operator"
kubectl apply -f "$ROOT/helm/fathom/crds/"
kubectl wait --for condition=established --timeout=60s crd/modelservices.fathom.dev crd/tenants.fathom.dev
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
if [ "${USE_CHART:-0}" = 1 ]; then
  # the operator runs from an image: build docker/operator.Dockerfile and load it into the cluster first
  helm upgrade --install fathom "$ROOT/helm/fathom" --namespace fathom-system --create-namespace --wait
else
  # From this checkout, outside the cluster: the autoscaler reads /metrics through a port-forward.
  PYTHONPATH="$ROOT/platform:$ROOT/operators" "$PYTHON" -m fathom_operator --namespace "$NS" \
    --metrics-url-template "http://127.0.0.1:$PORT/metrics" >"${TMPDIR:-/tmp}/fathom-operator.log" 2>&1 &
  PIDS+=($!)
  echo "operator log: ${TMPDIR:-/tmp}/fathom-operator.log"
fi

say "tenants and the demo ModelService in $NS"
kubectl apply -n "$NS" -f "$HERE/01-tenants.yaml"
sed "s#^spec:#spec:\n  image: $IMAGE#" "$HERE/02-modelservice-demo.yaml" | kubectl apply -n "$NS" -f -
kubectl wait -n "$NS" --for=jsonpath='{.status.phase}'=Applied tenants.fathom.dev/team-a tenants.fathom.dev/ops --timeout=120s
kubectl get -n "$NS" secret fathom-tenants -o jsonpath='{.data.tenants\.yaml}' | base64 -d | head -20
kubectl get -n "$NS" rayservice demo
echo "waiting for the model to be Ready (image pull and Ray start take a few minutes)..."
kubectl wait -n "$NS" --for=jsonpath='{.status.phase}'=Ready modelservices.fathom.dev/demo --timeout=20m
kubectl get -n "$NS" modelservices.fathom.dev,tenants.fathom.dev,rayservices.ray.io

say "OpenAI API through svc/demo-api"
kubectl port-forward -n "$NS" svc/demo-api "$PORT:8000" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 2; done
curl -fsS "http://127.0.0.1:$PORT/v1/models" -H "Authorization: Bearer sk-team-a-demo"; echo
curl -fsS "http://127.0.0.1:$PORT/v1/chat/completions" -H "Authorization: Bearer sk-team-a-demo" \
  -H 'Content-Type: application/json' \
  -d '{"model": "fathom-demo", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}'; echo
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/v1/models" -H "Authorization: Bearer wrong")
echo "unknown key -> HTTP $code (expected 401)"

say "scale by hand (autoscaling off) through the /scale subresource"
kubectl patch -n "$NS" modelservices.fathom.dev demo --type merge -p '{"spec": {"autoscaling": {"enabled": false}}}'
kubectl scale -n "$NS" modelservices.fathom.dev demo --replicas=2
kubectl wait -n "$NS" --for=jsonpath='{.status.replicas}'=2 modelservices.fathom.dev/demo --timeout=60s
kubectl get -n "$NS" rayservice demo -o jsonpath='{.spec.rayClusterConfig.workerGroupSpecs[0].replicas}'; echo
kubectl get -n "$NS" events --field-selector involvedObject.name=demo | tail -5
say "done"
