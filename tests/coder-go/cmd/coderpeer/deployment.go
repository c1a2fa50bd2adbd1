package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/xerrors"
	"tailscale.com/net/stun"
	"tailscale.com/tailcfg"

	"cdr.dev/slog/v3"
	"github.com/coder/coder/v2/codersdk"
	"github.com/coder/coder/v2/tailnet"
	"github.com/coder/coder/v2/tailnet/proto"
)

type deployment struct {
	userID     uuid.UUID
	username   string
	token      string
	workspaces []*workspace

	mu   sync.Mutex
	subs map[*subscription]struct{}
}

type workspace struct {
	id     uuid.UUID
	name   string
	agents []*agentInfo
}

type agentInfo struct {
	id   uuid.UUID
	name string
}

var (
	_ tailnet.WorkspaceUpdatesProvider = (*deployment)(nil)
	_ tailnet.TunnelAuthorizer         = (*deployment)(nil)
)

// newDeployment: workspaces dev1, dev2, … with agents main, agent2, … (as the Rust
// testbed names them), all running, owned by one user.
func newDeployment(username string, workspaces, agents int) *deployment {
	d := &deployment{
		userID:   uuid.New(),
		username: username,
		token:    randomToken(),
		subs:     map[*subscription]struct{}{},
	}
	for w := 1; w <= workspaces; w++ {
		ws := &workspace{id: uuid.New(), name: fmt.Sprintf("dev%d", w)}
		for a := 1; a <= agents; a++ {
			name := "main"
			if a > 1 {
				name = fmt.Sprintf("agent%d", a)
			}
			ws.agents = append(ws.agents, &agentInfo{id: uuid.New(), name: name})
		}
		d.workspaces = append(d.workspaces, ws)
	}
	return d
}

func (d *deployment) user() codersdk.User {
	return codersdk.User{
		ReducedUser: codersdk.ReducedUser{
			MinimalUser: codersdk.MinimalUser{ID: d.userID, Username: d.username},
			Email:       d.username + "@example.com",
			CreatedAt:   time.Unix(1700000000, 0).UTC(),
			Status:      codersdk.UserStatusActive,
			LoginType:   codersdk.LoginTypePassword,
		},
	}
}

// snapshot: every workspace and agent, as coderd's first WorkspaceUpdate carries them.
func (d *deployment) snapshot() *proto.WorkspaceUpdate {
	u := &proto.WorkspaceUpdate{}
	for _, ws := range d.workspaces {
		u.UpsertedWorkspaces = append(u.UpsertedWorkspaces, &proto.Workspace{
			Id:     tailnet.UUIDToByteSlice(ws.id),
			Name:   ws.name,
			Status: proto.Workspace_RUNNING,
		})
		for _, a := range ws.agents {
			u.UpsertedAgents = append(u.UpsertedAgents, &proto.Agent{
				Id:          tailnet.UUIDToByteSlice(a.id),
				Name:        a.name,
				WorkspaceId: tailnet.UUIDToByteSlice(ws.id),
			})
		}
	}
	return u
}

// Subscribe implements tailnet.WorkspaceUpdatesProvider for the one user.
func (d *deployment) Subscribe(_ context.Context, userID uuid.UUID) (tailnet.Subscription, error) {
	if userID != d.userID {
		return nil, xerrors.Errorf("no such user %s", userID)
	}
	s := &subscription{ch: make(chan *proto.WorkspaceUpdate, 16), d: d}
	s.ch <- d.snapshot()
	d.mu.Lock()
	d.subs[s] = struct{}{}
	d.mu.Unlock()
	return s, nil
}

// AuthorizeTunnel implements tailnet.TunnelAuthorizer: the user may reach its own agents.
func (d *deployment) AuthorizeTunnel(_ context.Context, agentID uuid.UUID) error {
	for _, ws := range d.workspaces {
		for _, a := range ws.agents {
			if a.id == agentID {
				return nil
			}
		}
	}
	return xerrors.Errorf("agent %s is not one of the user's", agentID)
}

func (d *deployment) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for s := range d.subs {
		close(s.ch)
		delete(d.subs, s)
	}
	return nil
}

type subscription struct {
	ch chan *proto.WorkspaceUpdate
	d  *deployment
}

func (s *subscription) Updates() <-chan *proto.WorkspaceUpdate { return s.ch }

func (s *subscription) Close() error {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	if _, ok := s.d.subs[s]; ok {
		delete(s.d.subs, s)
		close(s.ch)
	}
	return nil
}

// goAgent is a workspace agent's tailnet side: a real tailnet.Conn coordinated as an agent
// (AgentCoordinateeAuth) through the in-memory coordinator client, with TCP echo on 7,
// discard on 9 (for throughput) and HTTP on 80 on its tailnet addresses. ICMP echo is answered by its netstack.
type goAgent struct {
	conn  *tailnet.Conn
	coord tailnet.CloserWaiter
	lns   []net.Listener
}

func startAgent(logger slog.Logger, coord tailnet.Coordinator, derpMap *tailcfg.DERPMap, o serveOptions, ws *workspace, a *agentInfo) (*goAgent, error) {
	logger = logger.Named("agent." + a.name + "." + ws.name)
	conn, err := tailnet.NewConn(&tailnet.Options{
		ID: a.id,
		Addresses: []netip.Prefix{
			tailnet.TailscaleServicePrefix.PrefixFromUUID(a.id),
			tailnet.CoderServicePrefix.PrefixFromUUID(a.id),
		},
		DERPMap:             derpMap.Clone(),
		DERPForceWebSockets: o.forceWebsockets,
		BlockEndpoints:      o.blockDirect,
		Logger:              logger,
		ForceNetworkUp:      true,
		ClientType:          proto.TelemetryEvent_AGENT,
	})
	if err != nil {
		return nil, xerrors.Errorf("agent %s.%s: new tailnet conn: %w", a.name, ws.name, err)
	}
	ga := &goAgent{conn: conn}
	ctrl := tailnet.NewAgentCoordinationController(logger, conn)
	client := tailnet.NewInMemoryCoordinatorClient(logger, a.id, tailnet.AgentCoordinateeAuth{ID: a.id}, coord)
	ga.coord = ctrl.New(client)

	echo, err := conn.Listen("tcp", ":7")
	if err != nil {
		ga.Close()
		return nil, xerrors.Errorf("agent %s: listen :7: %w", a.name, err)
	}
	web, err := conn.Listen("tcp", ":80")
	if err != nil {
		_ = echo.Close()
		ga.Close()
		return nil, xerrors.Errorf("agent %s: listen :80: %w", a.name, err)
	}
	sink, err := conn.Listen("tcp", ":9")
	if err != nil {
		_ = echo.Close()
		_ = web.Close()
		ga.Close()
		return nil, xerrors.Errorf("agent %s: listen :9: %w", a.name, err)
	}
	ga.lns = []net.Listener{echo, web, sink}
	go serveEcho(logger, echo)
	go serveDiscard(sink)
	page := agentPage(ws.name, a.name)
	go func() {
		_ = http.Serve(web, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = io.WriteString(w, page)
		}))
	}()
	return ga, nil
}

func (a *goAgent) Close() {
	for _, l := range a.lns {
		_ = l.Close()
	}
	if a.coord != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = a.coord.Close(ctx)
		cancel()
	}
	_ = a.conn.Close()
}

// agentPage is the Rust testbed's page (tests match on its heading) with its own footer.
func agentPage(ws, agent string) string {
	return fmt.Sprintf("<!doctype html><title>%s.%s</title>\n<h1>Hello from agent %s of workspace %s</h1>\n<p>served by Coder's Go tailnet (coder/coder %s)</p>\n",
		agent, ws, agent, ws, coderModuleVersion())
}

// serveConns runs handle on each accepted connection (and closes it) until l closes.
func serveConns(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}

// serveEcho echoes each connection until the client half-closes, and logs how each ended:
// when a test sees a reset, the log says whether the echo failed on our side of the netstack.
func serveEcho(logger slog.Logger, l net.Listener) {
	serveConns(l, func(c net.Conn) {
		n, err := io.Copy(c, c)
		if err != nil {
			logger.Warn(context.Background(), "echo connection failed", slog.F("remote", c.RemoteAddr().String()), slog.F("bytes", n), slog.Error(err))
			return
		}
		logger.Debug(context.Background(), "echo connection done", slog.F("remote", c.RemoteAddr().String()), slog.F("bytes", n))
	})
}

// serveDiscard reads and drops everything (RFC 863), then reports the byte count as a
// decimal line when the client half-closes: a single-stream TCP throughput sink.
func serveDiscard(l net.Listener) {
	serveConns(l, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		_, _ = fmt.Fprintf(c, "%d\n", n)
	})
}

// coderModuleVersion: the version of github.com/coder/coder/v2 this binary was built from.
func coderModuleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == "github.com/coder/coder/v2" {
				return m.Version
			}
		}
	}
	return "unknown"
}

// stunAnswer is the binding response to req from `from` (IPv4 senders unmapped), or false
// when req is not a binding request.
func stunAnswer(req []byte, from netip.AddrPort) ([]byte, bool) {
	tx, err := stun.ParseBindingRequest(req)
	if err != nil {
		return nil, false
	}
	return stun.Response(tx, netip.AddrPortFrom(from.Addr().Unmap(), from.Port())), true
}
