package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/xerrors"
	"tailscale.com/derp"
	"tailscale.com/derp/derphttp"
	"tailscale.com/types/key"
)

// runDERP runs DERP clients from coder's tailscale fork (derphttp) against a DERP server:
//
//	--mode pair  two Go clients; one sends --packets random packets to the other, which
//	             sends each back; every byte is compared. Prints "derp pair ok".
//	--mode echo  one Go client that prints "echo key <node key>" and sends every packet
//	             back to its sender until SIGTERM (for a client of another implementation).
func runDERP(args []string) error {
	fs := flag.NewFlagSet("derp", flag.ContinueOnError)
	url := fs.String("url", "", "DERP URL, e.g. http://127.0.0.1:8080/derp")
	mode := fs.String("mode", "pair", "pair | echo")
	packets := fs.Int("packets", 200, "packets to send in pair mode")
	websockets := fs.Bool("websockets", false, "DERP over WebSocket instead of the Upgrade: derp handshake")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" {
		return xerrors.New("--url is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "derphttp: "+format+"\n", a...) }
	newClient := func() (*derphttp.Client, error) {
		c, err := derphttp.NewClient(key.NewNode(), *url, logf)
		if err != nil {
			return nil, err
		}
		c.ForceWebsockets = *websockets
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := c.Connect(cctx); err != nil {
			return nil, xerrors.Errorf("connect to %s: %w", *url, err)
		}
		// Connect returns once the client has sent its key, before the server has taken
		// it: until the ServerInfo frame arrives, packets sent to this client may be
		// dropped as addressed to nobody (a DERP server owes no delivery).
		if err := waitServerInfo(c, 10*time.Second); err != nil {
			return nil, xerrors.Errorf("%s: %w", *url, err)
		}
		return c, nil
	}
	switch *mode {
	case "echo":
		c, err := newClient()
		if err != nil {
			return err
		}
		defer c.Close()
		fmt.Printf("echo key %s\n", c.SelfPublicKey().String())
		go func() { <-ctx.Done(); _ = c.Close() }()
		for {
			m, err := c.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return xerrors.Errorf("recv: %w", err)
			}
			if p, ok := m.(derp.ReceivedPacket); ok {
				if err := c.Send(p.Source, append([]byte(nil), p.Data...)); err != nil {
					return xerrors.Errorf("echo to %s: %w", p.Source.ShortString(), err)
				}
			}
		}
	case "pair":
		a, err := newClient()
		if err != nil {
			return err
		}
		defer a.Close()
		b, err := newClient()
		if err != nil {
			return err
		}
		defer b.Close()
		go echoAll(b)
		for i := 0; i < *packets; i++ {
			want := make([]byte, 1+i*7%1300)
			_, _ = rand.Read(want)
			if err := a.Send(b.SelfPublicKey(), want); err != nil {
				return xerrors.Errorf("send %d: %w", i, err)
			}
			got, err := recvPacket(a, 5*time.Second)
			if err != nil {
				return xerrors.Errorf("packet %d: %w", i, err)
			}
			if !bytes.Equal(got, want) {
				return xerrors.Errorf("packet %d came back changed (%d bytes sent, %d received)", i, len(want), len(got))
			}
		}
		fmt.Printf("derp pair ok: %d packets echoed intact via %s\n", *packets, *url)
		return nil
	default:
		return xerrors.Errorf("--mode %q: want pair or echo", *mode)
	}
}

func echoAll(c *derphttp.Client) {
	for {
		m, err := c.Recv()
		if err != nil {
			return
		}
		if p, ok := m.(derp.ReceivedPacket); ok {
			_ = c.Send(p.Source, append([]byte(nil), p.Data...))
		}
	}
}

func recvPacket(c *derphttp.Client, timeout time.Duration) ([]byte, error) {
	m, err := recvUntil(c, timeout, func(m derp.ReceivedMessage) bool {
		_, ok := m.(derp.ReceivedPacket)
		return ok
	})
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), m.(derp.ReceivedPacket).Data...), nil
}

func waitServerInfo(c *derphttp.Client, timeout time.Duration) error {
	_, err := recvUntil(c, timeout, func(m derp.ReceivedMessage) bool {
		_, ok := m.(derp.ServerInfoMessage)
		return ok
	})
	return err
}

// recvUntil receives until a message satisfies want, or fails after timeout (the
// receiving goroutine then runs on until the client closes: these are one-shot tools).
func recvUntil(c *derphttp.Client, timeout time.Duration, want func(derp.ReceivedMessage) bool) (derp.ReceivedMessage, error) {
	type result struct {
		m   derp.ReceivedMessage
		err error
	}
	ch := make(chan result, 1)
	go func() {
		for {
			m, err := c.Recv()
			if err != nil || want(m) {
				ch <- result{m, err}
				return
			}
		}
	}()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-time.After(timeout):
		return nil, xerrors.Errorf("nothing awaited from the server within %s", timeout)
	}
}
