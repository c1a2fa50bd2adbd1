package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"golang.org/x/xerrors"
	"tailscale.com/derp"
	"tailscale.com/derp/derphttp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"

	"cdr.dev/slog/v3"
	"cdr.dev/slog/v3/sloggers/sloghuman"
	"github.com/coder/coder/v2/codersdk"
	"github.com/coder/coder/v2/codersdk/workspacesdk"
	"github.com/coder/coder/v2/tailnet"
	tailnetproto "github.com/coder/coder/v2/tailnet/proto"
	"github.com/coder/websocket"
)

// embeddedRegionID is coderd's default `--derp-server-region-id`.
const embeddedRegionID = 999

type serveOptions struct {
	listen          string
	workspaces      int
	agents          int
	username        string
	hostnameSuffix  string
	noSTUN          bool
	blockDirect     bool
	forceWebsockets bool
	verbose         bool
}

func runServe(args []string) error {
	var o serveOptions
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:0", "address to listen on (port 0 = any free port)")
	fs.IntVar(&o.workspaces, "workspaces", 3, "number of workspaces (dev1, dev2, ...)")
	fs.IntVar(&o.agents, "agents", 1, "agents per workspace (main, agent2, ...)")
	fs.StringVar(&o.username, "username", "testy", "the owner's username")
	fs.StringVar(&o.hostnameSuffix, "hostname-suffix", "", "DNS hostname suffix the deployment reports (default: unset, clients use coder)")
	fs.BoolVar(&o.noSTUN, "no-stun", false, "serve no STUN server")
	fs.BoolVar(&o.blockDirect, "block-direct", false, "DisableDirectConnections (coderd's --block-direct-connections)")
	fs.BoolVar(&o.forceWebsockets, "derp-force-websockets", false, "DERPForceWebSockets (coderd's --derp-force-websockets)")
	fs.BoolVar(&o.verbose, "v", false, "debug logs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.workspaces < 0 || o.agents < 1 {
		return xerrors.New("--workspaces must be >= 0 and --agents >= 1")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	logger := slog.Make(sloghuman.Sink(os.Stderr)).Leveled(level)

	srv, err := startServer(ctx, logger, o)
	if err != nil {
		return err
	}
	defer srv.Close()

	line, err := json.Marshal(srv.summary())
	if err != nil {
		return err
	}
	fmt.Println(string(line))
	<-ctx.Done()
	logger.Info(context.Background(), "stopping")
	return nil
}

// server is one deployment: HTTP routes, coordinator, DERP, STUN and the agents.
type server struct {
	logger    slog.Logger
	opts      serveOptions
	dep       *deployment
	accessURL *url.URL
	stunAddr  string
	derpMap   *tailcfg.DERPMap
	coord     tailnet.Coordinator
	derp      *derp.Server
	derpClose func()
	http      *http.Server
	stun      net.PacketConn
	agents    []*goAgent
}

func startServer(ctx context.Context, logger slog.Logger, o serveOptions) (*server, error) {
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return nil, xerrors.Errorf("listen on %s: %w", o.listen, err)
	}
	tcpAddr := ln.Addr().(*net.TCPAddr)
	host := tcpAddr.IP.String()
	s := &server{
		logger:    logger,
		opts:      o,
		dep:       newDeployment(o.username, o.workspaces, o.agents),
		accessURL: &url.URL{Scheme: "http", Host: ln.Addr().String()},
	}

	var stunAddrs []string
	if !o.noSTUN {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
		if err != nil {
			_ = ln.Close()
			return nil, xerrors.Errorf("listen for STUN: %w", err)
		}
		s.stun = pc
		s.stunAddr = pc.LocalAddr().String()
		stunAddrs = []string{s.stunAddr}
		go serveSTUN(pc, logger.Named("stun"))
	}

	// As coderd builds it (cli/server.go): the embedded relay's region, with one DERP node
	// at the access URL, and each STUN address in a region of its own.
	region := &tailcfg.DERPRegion{
		EmbeddedRelay: true,
		RegionID:      embeddedRegionID,
		RegionCode:    "coder",
		RegionName:    "Coder Embedded Relay",
		Nodes: []*tailcfg.DERPNode{{
			Name:      fmt.Sprintf("%db", embeddedRegionID),
			RegionID:  embeddedRegionID,
			HostName:  host,
			DERPPort:  tcpAddr.Port,
			STUNPort:  -1,
			ForceHTTP: true,
		}},
	}
	s.derpMap, err = tailnet.NewDERPMap(ctx, region, stunAddrs, "", "", o.blockDirect)
	if err != nil {
		_ = ln.Close()
		return nil, xerrors.Errorf("build the DERP map: %w", err)
	}

	s.coord = tailnet.NewCoordinator(logger.Named("coord"))
	var coordPtr atomic.Pointer[tailnet.Coordinator]
	coordPtr.Store(&s.coord)
	svc, err := tailnet.NewClientService(tailnet.ClientServiceOptions{
		Logger:                   logger.Named("tailnetsvc"),
		CoordPtr:                 &coordPtr,
		DERPMapUpdateFrequency:   5 * time.Second,
		DERPMapFn:                func() *tailcfg.DERPMap { return s.derpMap.Clone() },
		NetworkTelemetryHandler:  func([]*tailnetproto.TelemetryEvent) {},
		ResumeTokenProvider:      tailnet.NewInsecureTestResumeTokenProvider(),
		WorkspaceUpdatesProvider: s.dep,
	})
	if err != nil {
		_ = ln.Close()
		return nil, xerrors.Errorf("tailnet client service: %w", err)
	}
	s.derp = derp.NewServer(key.NewNode(), tailnet.Logger(logger.Named("derp")))
	derpHandler, derpClose := tailnet.WithWebsocketSupport(s.derp, derphttp.Handler(s.derp))
	s.derpClose = derpClose

	s.http = &http.Server{
		Handler:           s.routes(svc, derpHandler),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		if err := s.http.Serve(ln); err != nil && !xerrors.Is(err, http.ErrServerClosed) {
			logger.Error(context.Background(), "http server", slog.Error(err))
		}
	}()

	agentMap := s.derpMap.Clone()
	tailnet.RewriteDERPMapDefaultRelay(ctx, logger, agentMap, s.accessURL)
	for _, ws := range s.dep.workspaces {
		for _, a := range ws.agents {
			ga, err := startAgent(logger, s.coord, agentMap, o, ws, a)
			if err != nil {
				s.Close()
				return nil, err
			}
			s.agents = append(s.agents, ga)
		}
	}
	logger.Info(ctx, "serving", slog.F("url", s.accessURL.String()), slog.F("stun", s.stunAddr),
		slog.F("coder_version", coderModuleVersion()))
	return s, nil
}

func (s *server) Close() {
	for _, a := range s.agents {
		a.Close()
	}
	if s.http != nil {
		_ = s.http.Close()
	}
	if s.derpClose != nil {
		s.derpClose()
	}
	if s.derp != nil {
		_ = s.derp.Close()
	}
	if s.stun != nil {
		_ = s.stun.Close()
	}
	if s.coord != nil {
		_ = s.coord.Close()
	}
	_ = s.dep.Close()
}

// routes: what coderd serves to a Coder Connect tunnel, with coderd's status codes.
func (s *server) routes(svc *tailnet.ClientService, derpHandler http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v2/buildinfo", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, codersdk.BuildInfoResponse{
			Version:     coderModuleVersion(),
			ExternalURL: "https://github.com/coder/coder",
		})
	})
	mux.HandleFunc("GET /api/v2/users/me", s.authed(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.dep.user())
	}))
	mux.HandleFunc("GET /api/v2/workspaceagents/connection", s.authed(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, workspacesdk.AgentConnectionInfo{
			DERPMap:                  s.derpMap.Clone(),
			DERPForceWebSockets:      s.opts.forceWebsockets,
			DisableDirectConnections: s.opts.blockDirect,
			HostnameSuffix:           s.opts.hostnameSuffix,
		})
	}))
	mux.HandleFunc("GET /api/v2/tailnet", s.authed(func(w http.ResponseWriter, r *http.Request) {
		s.serveTailnet(svc, w, r)
	}))
	mux.Handle("GET /derp", derpHandler)
	mux.HandleFunc("GET /derp/latency-check", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.logger.Info(r.Context(), "no such route", slog.F("method", r.Method), slog.F("path", r.URL.Path))
		writeJSON(w, http.StatusNotFound, codersdk.Response{Message: "Route not found."})
	})
	return mux
}

// authed checks the session token as coderd's API key middleware does (header, then
// query parameter), answering 401 with a codersdk.Response.
func (s *server) authed(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token := r.Header.Get(codersdk.SessionTokenHeader)
		if token == "" {
			token = r.URL.Query().Get(codersdk.SessionTokenCookie)
		}
		if token == "" {
			writeJSON(w, http.StatusUnauthorized, codersdk.Response{
				Message: fmt.Sprintf("Cookie %q or query parameter must be provided.", codersdk.SessionTokenCookie),
			})
			return
		}
		if token != s.dep.token {
			writeJSON(w, http.StatusUnauthorized, codersdk.Response{Message: "Invalid API key."})
			return
		}
		next(w, r)
	}
}

// serveTailnet is coderd's tailnetRPCConn: version check, resume token, websocket, then the
// client service with a user's coordinatee auth (every agent of the deployment allowed).
func (s *server) serveTailnet(svc *tailnet.ClientService, w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	version := "2.0"
	if qv := r.URL.Query().Get("version"); qv != "" {
		version = qv
	}
	if err := tailnetproto.CurrentVersion.Validate(version); err != nil {
		writeJSON(w, http.StatusBadRequest, codersdk.Response{
			Message:     "Unknown or unsupported API version",
			Validations: []codersdk.ValidationError{{Field: "version", Detail: err.Error()}},
		})
		return
	}
	peerID := uuid.New()
	if rt := r.URL.Query().Get("resume_token"); rt != "" {
		id, err := tailnet.NewInsecureTestResumeTokenProvider().VerifyResumeToken(ctx, rt)
		if err != nil {
			writeJSON(w, http.StatusUnauthorized, codersdk.Response{
				Message: workspacesdk.CoordinateAPIInvalidResumeToken,
				Detail:  err.Error(),
				Validations: []codersdk.ValidationError{
					{Field: "resume_token", Detail: workspacesdk.CoordinateAPIInvalidResumeToken},
				},
			})
			return
		}
		peerID = id
		s.logger.Info(ctx, "accepted resume token", slog.F("peer_id", peerID))
	}
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, codersdk.Response{Message: "Failed to accept websocket.", Detail: err.Error()})
		return
	}
	ctx, wsNetConn := codersdk.WebsocketNetConn(ctx, conn, websocket.MessageBinary)
	defer wsNetConn.Close()
	defer conn.Close(websocket.StatusNormalClosure, "")
	s.logger.Info(ctx, "tailnet client connected", slog.F("peer_id", peerID), slog.F("version", version),
		slog.F("desktop_telemetry", r.Header.Get(codersdk.CoderDesktopTelemetryHeader)))
	err = svc.ServeClient(ctx, version, wsNetConn, tailnet.StreamID{
		Name: "client",
		ID:   peerID,
		Auth: tailnet.ClientUserCoordinateeAuth{Auth: s.dep},
	})
	if err != nil && !xerrors.Is(err, context.Canceled) && !strings.Contains(err.Error(), "EOF") {
		s.logger.Warn(ctx, "tailnet client ended", slog.Error(err))
		_ = conn.Close(websocket.StatusInternalError, err.Error())
	}
}

type summaryAgent struct {
	Name      string   `json:"name"`
	Workspace string   `json:"workspace"`
	FQDN      []string `json:"fqdn"`
	IP        string   `json:"ip"`
	ID        string   `json:"id"`
}

func (s *server) summary() map[string]any {
	suffix := s.opts.hostnameSuffix
	if suffix == "" {
		suffix = tailnet.CoderDNSSuffix
	}
	var agents []summaryAgent
	for _, ws := range s.dep.workspaces {
		for _, a := range ws.agents {
			agents = append(agents, summaryAgent{
				Name:      a.name,
				Workspace: ws.name,
				FQDN:      fqdns(a.name, ws.name, s.dep.username, suffix, len(ws.agents)),
				IP:        tailnet.CoderServicePrefix.AddrFromUUID(a.id).String(),
				ID:        a.id.String(),
			})
		}
	}
	out := map[string]any{
		"url":           strings.TrimSuffix(s.accessURL.String(), "/"),
		"token":         s.dep.token,
		"agents":        agents,
		"coder_version": coderModuleVersion(),
	}
	if s.stunAddr != "" {
		out["stun"] = s.stunAddr
	}
	return out
}

// fqdns: the names Coder's tunnel gives an agent (tailnet/controllers.go updateDNSNames),
// without the trailing dot.
func fqdns(agent, ws, owner, suffix string, agentsInWorkspace int) []string {
	agent, ws, owner = strings.ToLower(agent), strings.ToLower(ws), strings.ToLower(owner)
	out := []string{
		fmt.Sprintf("%s.%s.me.%s", agent, ws, suffix),
		fmt.Sprintf("%s.%s.%s.%s", agent, ws, owner, suffix),
	}
	if agentsInWorkspace == 1 {
		out = append(out, fmt.Sprintf("%s.%s", ws, suffix))
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func randomToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// serveSTUN answers STUN binding requests with the sender's address, using the STUN codec
// of coder's tailscale fork (what coderd's clients measure against).
func serveSTUN(pc net.PacketConn, logger slog.Logger) {
	buf := make([]byte, 1500)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			continue
		}
		resp, ok := stunAnswer(buf[:n], ua.AddrPort())
		if !ok {
			logger.Debug(context.Background(), "not a STUN binding request", slog.F("from", addr.String()))
			continue
		}
		_, _ = pc.WriteTo(resp, addr)
	}
}
