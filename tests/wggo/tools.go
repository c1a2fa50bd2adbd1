//go:build tools

// Package tools pins current wireguard-go (golang.zx2c4.com/wireguard, with its UDP
// GSO/GRO and TUN offloads) for the throughput benches: `go build
// golang.zx2c4.com/wireguard` from this module builds the pinned version.
package tools

import _ "golang.zx2c4.com/wireguard"
