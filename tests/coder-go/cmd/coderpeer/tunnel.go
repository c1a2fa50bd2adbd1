package main

import (
	"context"
	"flag"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/xerrors"

	"cdr.dev/slog/v3"
	"cdr.dev/slog/v3/sloggers/sloghuman"
	"github.com/coder/coder/v2/vpn"
)

// runTunnel is Coder's Go tunnel (vpn.NewTunnel + vpn.NewClient) on fds 3 and 4, in
// userspace (tailnet's netstack, no TUN), sending its routes and DNS to the manager as
// NetworkSettings requests (vpn.NewRouter / vpn.NewDNSConfigurator of the tunnel, as the
// macOS tunnel does): the reference for what a CoderVPN tunnel says on the wire.
func runTunnel(args []string) error {
	fs := flag.NewFlagSet("tunnel", flag.ContinueOnError)
	readFD := fs.Int("rpc-read-fd", 3, "descriptor to read from")
	writeFD := fs.Int("rpc-write-fd", 4, "descriptor to write to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.Make(sloghuman.Sink(os.Stderr)).Leveled(slog.LevelInfo)
	pipe, err := vpn.NewBidirectionalPipe(uintptr(*readFD), uintptr(*writeFD))
	if err != nil {
		return xerrors.Errorf("pipe: %w", err)
	}
	defer pipe.Close()
	c := &settingsClient{inner: vpn.NewClient(), tunnel: make(chan *vpn.Tunnel, 1)}
	t, err := vpn.NewTunnel(ctx, logger, pipe, c)
	if err != nil {
		return xerrors.Errorf("new tunnel: %w", err)
	}
	c.tunnel <- t
	defer t.Close()
	// As coder's vpn-daemon: runs until signalled.
	<-ctx.Done()
	return nil
}

// settingsClient gives the connection the tunnel's own router and DNS configurator, which
// turn tailnet's settings into NetworkSettings requests to the manager.
type settingsClient struct {
	inner  vpn.Client
	tunnel chan *vpn.Tunnel
	t      *vpn.Tunnel
}

func (c *settingsClient) NewConn(ctx context.Context, u *url.URL, token string, o *vpn.Options) (vpn.Conn, error) {
	if c.t == nil {
		select {
		case c.t = <-c.tunnel:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	o.Router = vpn.NewRouter(c.t)
	o.DNSConfigurator = vpn.NewDNSConfigurator(c.t)
	return c.inner.NewConn(ctx, u, token, o)
}
