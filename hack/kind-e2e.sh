#!/usr/bin/env bash
# Brings kubevirt-spdk up on a kind cluster with KubeVirt, for a user with Docker, kind and
# kubectl. Not run in CI (no container engine there): CI validates the manifests instead.
#
#   hack/kind-e2e.sh up      # cluster + cert-manager + KubeVirt (Sidecar gate) + kubevirt-spdk
#   hack/kind-e2e.sh vm      # a CachedImage and a VM from manifests/examples, then waits for it
#   hack/kind-e2e.sh down
#
# The node image needs hugepages for spdk_tgt: on the host, before `up`:
#   echo 1024 | sudo tee /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
# Without an spdk_tgt image, edit the DaemonSet: drop the spdk-tgt container and run the agent
# with --backend=qsd (qemu-storage-daemon ships in the kubevirt-spdk image).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-kubevirt-spdk}
KUBEVIRT_VERSION=${KUBEVIRT_VERSION:-v1.4.0}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.16.2}
IMAGE=${IMAGE:-kubevirt-spdk:dev}
SPDK_IMAGE=${SPDK_IMAGE:?set SPDK_IMAGE to an image with spdk_tgt (v24.01 or later)}

up() {
  kind create cluster --name "$CLUSTER"
  docker build -t "$IMAGE" .
  kind load docker-image --name "$CLUSTER" "$IMAGE"
  kubectl label node --all kubevirt-spdk.io/enabled=true
  kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
  kubectl apply -f "https://github.com/kubevirt/kubevirt/releases/download/${KUBEVIRT_VERSION}/kubevirt-operator.yaml"
  kubectl apply -f "https://github.com/kubevirt/kubevirt/releases/download/${KUBEVIRT_VERSION}/kubevirt-cr.yaml"
  # kind nodes have no usable /dev/kvm everywhere: software emulation.
  kubectl -n kubevirt patch kubevirt kubevirt --type merge -p '{"spec":{"configuration":{"developerConfiguration":{"useEmulation":true}}}}'
  kubectl -n kubevirt patch kubevirt kubevirt --type merge --patch-file manifests/kubevirt/sidecar-feature-gate.yaml
  kubectl -n cert-manager wait --for=condition=Available deploy --all --timeout=300s
  kubectl -n kubevirt wait kv kubevirt --for condition=Available --timeout=600s
  (cd manifests && kustomize edit set image "kubevirt-spdk=${IMAGE}" "spdk-tgt=${SPDK_IMAGE}")
  kubectl apply -k manifests/
  kubectl -n kubevirt-spdk rollout status ds/kubevirt-spdk-node --timeout=300s
  kubectl -n kubevirt-spdk rollout status deploy/kubevirt-spdk-webhook --timeout=300s
}

vm() {
  kubectl apply -f manifests/examples/cachedimage.yaml
  kubectl apply -f manifests/examples/vm.yaml
  kubectl wait vmi fedora-spdk --for condition=Ready --timeout=600s
  kubectl get vmi fedora-spdk -o jsonpath='{.metadata.annotations.kubevirt-spdk\.io/status}'; echo
  kubectl get nodeimagecaches
}

down() { kind delete cluster --name "$CLUSTER"; }

"${1:-up}"
