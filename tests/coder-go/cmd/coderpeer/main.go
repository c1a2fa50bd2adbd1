// Command coderpeer runs Coder's own Go code (the pinned github.com/coder/coder/v2 release)
// as a test peer for codervpn:
//
//	coderpeer serve    a Coder tailnet deployment in one process: the REST routes a tunnel
//	                   calls, the /api/v2/tailnet websocket served by tailnet.ClientService,
//	                   a real tailnet.Coordinator, a real DERP server (coder's tailscale fork,
//	                   with websocket support), a STUN server, and N real Go agents
//	                   (tailnet.Conn) serving TCP echo on 7 and HTTP on 80. Prints one JSON
//	                   line like `codervpn testbed serve`.
//	coderpeer manager  a CoderVPN manager (handshake and framing written here from the spec,
//	                   messages are coder's exported vpn types) driving a tunnel child.
//	coderpeer derp     Go DERP clients (derphttp) exchanging packets through a DERP server.
//	coderpeer tunnel   Coder's Go tunnel (vpn.NewTunnel) in userspace on fds 3 and 4, sending
//	                   NetworkSettings to its manager as the macOS tunnel does.
//
// Nothing here copies Coder's code: it imports and wires Coder's packages.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = runServe(os.Args[2:])
	case "manager":
		err = runManager(os.Args[2:])
	case "derp":
		err = runDERP(os.Args[2:])
	case "tunnel":
		err = runTunnel(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "coderpeer %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: coderpeer serve|manager|derp|tunnel [flags] (-h for each)")
	os.Exit(2)
}
