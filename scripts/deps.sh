#!/usr/bin/env bash
# Install the Debian packages that the build, tests, fuzzers and benchmarks need.
# Idempotent and quiet when everything is present.
set -euo pipefail
pkgs=(
  gcc clang make pkg-config libclang-rt-14-dev
  libevent-dev libnghttp2-dev libmbedtls-dev libjansson-dev libmicrohttpd-dev node-llhttp
  libgnutls28-dev # injector: serving-certificate reload through GnuTLS (docs/injector.md)
  libcmocka-dev
  curl nghttp2-client nghttp2-server openssl jq iproute2 iptables procps util-linux
  python3 # test helpers, the e2e pod harness (test/e2e/pod.py) and make demo
  python3-grpcio # real gRPC servers and clients: grpc.sh (docs/grpc.md), the health port's gRPC probes (grpc_probe.sh)
  wrk haproxy nginx-light gnuplot-nox
  stunnel4 # h2spec over mTLS: a TLS relay presenting a mesh certificate (docs/testing.md)
  python3-websockets python3-h2 # WebSocket peers nobody here wrote: test/integration/websocket.sh (docs/testing.md)
  # make image / make image-test (docs/install.md): buildah builds the images from scratch,
  # skopeo writes and inspects docker-archive tarballs, podman + runc run them (crun fails
  # here), catatonit is podman's local pause image (nothing pulled), netavark its network
  # backend (the pods themselves use --network none), binutils strips
  buildah skopeo podman runc catatonit netavark binutils
)
missing=()
for p in "${pkgs[@]}"; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$st" == "install ok installed" ]] || missing+=("$p")
done
# Node.js validates patched pods (kubernetes-models). The machine image ships its own node and
# npm, which Debian's npm package conflicts with: only install Debian's when there is none.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# kubectl validates patches in the injector tests; Debian 12 has no package for it, the
# machine image ships one. Say so clearly rather than fail obscurely later.
command -v kubectl >/dev/null || echo "deps: note: kubectl not found; injector patch tests will fail" >&2
# kubernetes-models validates patched pods (npm, pinned in test/js/package.json).
if [[ -f test/js/package.json && ! -d test/js/node_modules/kubernetes-models ]]; then
  echo "deps: npm install in test/js"
  (cd test/js && npm install --no-audit --no-fund --silent >/dev/null)
fi
