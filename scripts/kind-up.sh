#!/usr/bin/env bash
# Earmark on a local kind cluster: create the cluster (if needed), load the images built by
# `make images` into its nodes, and install the chart.
#
#   scripts/kind-up.sh                 # cluster "earmark", namespace "earmark"
#   KIND_CLUSTER=dev NAMESPACE=music scripts/kind-up.sh --set nats.replicas=3
#
# Needs docker, kind, kubectl and helm on PATH. Extra arguments go to `helm upgrade --install`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIND_CLUSTER:-earmark}"
NAMESPACE="${NAMESPACE:-earmark}"
RELEASE="${RELEASE:-earmark}"
TAG="${TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/earmark/Chart.yaml")}"
SERVICES=(ingest fingerprint search features monitor)

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "kind-up: $1 is not installed ($2)" >&2; exit 1; }
}
need docker "https://docs.docker.com/engine/install/"
need kind "go install sigs.k8s.io/kind@latest, or your package manager"
need kubectl "your package manager (Debian: apt-get install kubectl)"
need helm "your package manager; or see docs/kubernetes.md"

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "kind-up: creating cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

for svc in "${SERVICES[@]}"; do
  image="earmark/$svc:$TAG"
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "kind-up: $image is missing; run 'make images' first" >&2
    exit 1
  fi
  echo "kind-up: loading $image into kind"
  kind load docker-image --name "$CLUSTER" "$image"
done

echo "kind-up: installing release $RELEASE into namespace $NAMESPACE"
helm upgrade --install "$RELEASE" "$ROOT/charts/earmark" \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.tag="$TAG" --set image.pullPolicy=Never \
  --wait --timeout 10m "$@"

kubectl -n "$NAMESPACE" get pods -l "app.kubernetes.io/instance=$RELEASE"
