#!/usr/bin/env bash
# Builds Coder's own Go code from the pinned github.com/coder/coder/v2 release (go.mod) into
# target/coder-go/ beside this repository's Rust build:
#   coder      the real `coder` CLI (slim: no server), version stamped as the pinned
#              release, as coder's release builds do (CGO_ENABLED=0, tags slim,ts_omit_aws)
#   coderpeer  a Coder tailnet deployment, a CoderVPN manager and DERP clients, all wiring
#              coder's packages (cmd/coderpeer)
#   wireguard-go  current wireguard-go from source (golang.zx2c4.com/wireguard, pinned in
#              ../wggo/go.mod), the benches' `wggo-current` column
# Downloads come from the Go module proxy only, checked against go.sum. Fails loudly.
set -euo pipefail
cd "$(dirname "$0")"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
out=${CODER_GO_OUT:-$(cd ../.. && pwd)/target/coder-go}
mkdir -p "$out"
version=$(go list -m -f '{{.Version}}' github.com/coder/coder/v2)
start=$(date +%s)
go build -trimpath -tags slim,ts_omit_aws \
  -ldflags "-X github.com/coder/coder/v2/buildinfo.tag=${version#v}" \
  -o "$out/coder" github.com/coder/coder/v2/cmd/coder
go build -trimpath -o "$out/coderpeer" ./cmd/coderpeer
(cd ../wggo && go build -trimpath -o "$out/wireguard-go" golang.zx2c4.com/wireguard)
# Our own Go code is held to gofmt and go vet.
unformatted=$(gofmt -l cmd tools.go)
[ -z "$unformatted" ] || { echo "coder-go: not gofmt-formatted: $unformatted"; exit 1; }
go vet ./cmd/...
"$out/coder" version | head -1
"$out/wireguard-go" --version | head -1
echo "coder-go: built coder and coderpeer from github.com/coder/coder/v2 $version in $(( $(date +%s) - start )) s -> $out"
