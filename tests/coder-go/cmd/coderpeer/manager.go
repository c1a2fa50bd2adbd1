package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/proxy"
	"golang.org/x/xerrors"
	"google.golang.org/protobuf/encoding/protojson"
	protobuf "google.golang.org/protobuf/proto"

	"github.com/coder/coder/v2/vpn"
)

// maxFrame is the CoderVPN frame cap (vpn/serdes.go: 16 MiB).
const maxFrame = 1 << 24

type managerOptions struct {
	url, token string
	tunFD      int
	agents     int
	fetch      string
	socks5     string
	wantP2P    bool
	hold       bool
	dump       string
	header     string
	deviceOS   string
	timeout    time.Duration
}

// runManager drives a tunnel child (the command after --) over two pipes handed down as
// fds 3 (the tunnel reads) and 4 (the tunnel writes), as Coder's managers do. The
// handshake and the framing are written here from the protocol; the messages are coder's
// exported vpn types.
func runManager(args []string) error {
	var o managerOptions
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	fs.StringVar(&o.url, "url", "", "Coder URL for the StartRequest")
	fs.StringVar(&o.token, "token", "", "session token for the StartRequest")
	fs.IntVar(&o.tunFD, "tun-fd", -1, "tunnel_file_descriptor (-1: none)")
	fs.IntVar(&o.agents, "agents", 1, "wait for this many agents with names and addresses")
	fs.StringVar(&o.fetch, "fetch", "", "after the agents: GET this URL (through --socks5 if set) and print the body")
	fs.StringVar(&o.socks5, "socks5", "", "SOCKS5 proxy address for --fetch")
	fs.BoolVar(&o.wantP2P, "want-p2p", false, "wait for an agent whose last_ping says did_p2p")
	fs.BoolVar(&o.hold, "hold", false, "after the agents (and --fetch): print \"holding\" and keep the tunnel up until SIGINT/SIGTERM, then stop")
	fs.StringVar(&o.dump, "dump", "", "write what the tunnel said (every NetworkSettings request, the final agents and workspaces) to this JSON file")
	fs.StringVar(&o.header, "header", "", "send this header line instead of ours (handshake tests); then expect the tunnel to close")
	fs.StringVar(&o.deviceOS, "device-os", "Linux", "device_os telemetry field")
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "overall deadline")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cmdline := fs.Args()
	if len(cmdline) == 0 {
		return xerrors.New("want the tunnel command after the flags (e.g. -- codervpn vpn-daemon run --rpc-read-fd 3 --rpc-write-fd 4)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()

	toTunnelR, toTunnelW, err := os.Pipe()
	if err != nil {
		return err
	}
	fromTunnelR, fromTunnelW, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(cmdline[0], cmdline[1:]...)
	cmd.ExtraFiles = []*os.File{toTunnelR, fromTunnelW} // fds 3 and 4
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return xerrors.Errorf("start %s: %w", cmdline[0], err)
	}
	_ = toTunnelR.Close()
	_ = fromTunnelW.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
	}()

	m := &manager{w: toTunnelW, r: bufio.NewReader(fromTunnelR), pending: map[uint64]chan *vpn.TunnelMessage{}}
	if o.header != "" {
		return m.badHeader(ctx, o.header, exited)
	}
	version, err := m.handshake()
	if err != nil {
		return err
	}
	fmt.Printf("handshake: tunnel speaks %s\n", version)
	go m.readLoop()

	start := &vpn.StartRequest{
		TunnelFileDescriptor: int32(o.tunFD),
		CoderUrl:             o.url,
		ApiToken:             o.token,
		DeviceId:             "coderpeer-manager",
		DeviceOs:             o.deviceOS,
		CoderDesktopVersion:  "0.0.0-coderpeer",
	}
	resp, err := m.rpc(ctx, &vpn.ManagerMessage{Msg: &vpn.ManagerMessage_Start{Start: start}})
	if err != nil {
		return xerrors.Errorf("start: %w", err)
	}
	sr := resp.GetStart()
	if sr == nil {
		return xerrors.Errorf("start: the reply is not a StartResponse: %v", resp)
	}
	if !sr.Success {
		return xerrors.Errorf("start failed: %s", sr.ErrorMessage)
	}
	fmt.Println("start: success")

	agents, err := m.waitAgents(ctx, o.agents, o.wantP2P)
	if err != nil {
		return err
	}
	for _, a := range agents {
		fmt.Printf("agent %s fqdn=%s ip=%s p2p=%v\n", a.Name, strings.Join(a.Fqdn, ","), strings.Join(a.IpAddrs, ","), a.GetLastPing().GetDidP2P())
	}

	if o.fetch != "" {
		body, err := fetch(ctx, o.fetch, o.socks5)
		if err != nil {
			return xerrors.Errorf("fetch %s: %w", o.fetch, err)
		}
		fmt.Printf("fetched %s: %s\n", o.fetch, firstLine(body, "Hello from"))
	}

	if o.dump != "" {
		// Settings can follow the agents (Coder's tunnel sends DNS servers only once its
		// hosts are set): wait for DNS settings with servers, then until none has come for
		// 2 s (30 s at most in all).
		m.settleSettings(2*time.Second, 30*time.Second)
	}
	if o.hold {
		fmt.Println("holding; SIGINT or SIGTERM stops")
		sig, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		<-sig.Done()
		stop()
		ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
	}

	resp, err = m.rpc(ctx, &vpn.ManagerMessage{Msg: &vpn.ManagerMessage_GetPeerUpdate{GetPeerUpdate: &vpn.GetPeerUpdate{}}})
	if err != nil {
		return xerrors.Errorf("get_peer_update: %w", err)
	}
	if o.dump != "" {
		if err := m.writeDump(o.dump, resp.GetPeerUpdate()); err != nil {
			return xerrors.Errorf("--dump: %w", err)
		}
	}
	fmt.Printf("get_peer_update: %d workspaces, %d agents\n", len(resp.GetPeerUpdate().GetUpsertedWorkspaces()), len(resp.GetPeerUpdate().GetUpsertedAgents()))

	resp, err = m.rpc(ctx, &vpn.ManagerMessage{Msg: &vpn.ManagerMessage_Stop{Stop: &vpn.StopRequest{}}})
	if err != nil {
		return xerrors.Errorf("stop: %w", err)
	}
	if !resp.GetStop().GetSuccess() {
		return xerrors.Errorf("stop failed: %s", resp.GetStop().GetErrorMessage())
	}
	fmt.Println("stop: success")
	// Hang up. Coder's vpn-daemon keeps running until it is signalled (its command waits
	// for the context of the invocation); ours exits on end of file. Both are reported.
	_ = toTunnelW.Close()
	select {
	case err := <-exited:
		fmt.Printf("tunnel exited on hang-up: %v\n", errString(err))
	case <-time.After(3 * time.Second):
		fmt.Println("tunnel still running 3 s after hang-up; sending SIGTERM")
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			fmt.Printf("tunnel exited on SIGTERM: %v\n", errString(err))
		case <-time.After(10 * time.Second):
			return xerrors.New("the tunnel did not exit within 10 s of SIGTERM")
		}
	}
	fmt.Println("manager ok")
	return nil
}

type manager struct {
	w            io.Writer
	r            *bufio.Reader
	wmu          sync.Mutex
	mu           sync.Mutex
	nextID       uint64
	pending      map[uint64]chan *vpn.TunnelMessage
	agents       map[string]*vpn.Agent
	changed      chan struct{}
	settings     []*vpn.NetworkSettingsRequest
	lastSettings time.Time
	readErr      error
}

// handshake: our header "codervpn manager <versions>\n", then theirs read byte by byte up
// to the newline (at most 256 bytes); the role and a common major version are checked.
func (m *manager) handshake() (string, error) {
	if _, err := io.WriteString(m.w, fmt.Sprintf("codervpn manager %s\n", vpn.CurrentSupportedVersions.String())); err != nil {
		return "", xerrors.Errorf("write header: %w", err)
	}
	line, err := readHeader(m.r)
	if err != nil {
		return "", err
	}
	parts := strings.Split(line, " ")
	if len(parts) != 3 || parts[0] != "codervpn" || parts[1] != "tunnel" {
		return "", xerrors.Errorf("bad tunnel header %q", line)
	}
	theirs, err := vpn.ParseRPCVersionList(parts[2])
	if err != nil {
		return "", xerrors.Errorf("tunnel header %q: %w", line, err)
	}
	v, ok := vpn.CurrentSupportedVersions.IsCompatibleWith(theirs)
	if !ok {
		return "", xerrors.Errorf("tunnel versions %s not compatible with %s", theirs, vpn.CurrentSupportedVersions)
	}
	return v.String(), nil
}

func readHeader(r *bufio.Reader) (string, error) {
	var b []byte
	for len(b) < 256 {
		c, err := r.ReadByte()
		if err != nil {
			return "", xerrors.Errorf("read header: %w", err)
		}
		if c == '\n' {
			return string(b), nil
		}
		b = append(b, c)
	}
	return "", xerrors.Errorf("header longer than 256 bytes: %q", b)
}

// badHeader sends a header line the tunnel must refuse and reports what the tunnel did:
// its own header (if any) and whether it then closed the pipe.
func (m *manager) badHeader(ctx context.Context, header string, exited <-chan error) error {
	if _, err := io.WriteString(m.w, header+"\n"); err != nil {
		return err
	}
	line, err := readHeader(m.r)
	if err == nil {
		fmt.Printf("tunnel header: %s\n", line)
	}
	var buf [1]byte
	_, err = m.r.Read(buf[:])
	if err == nil {
		return xerrors.New("the tunnel sent a frame after a bad header; want the pipe closed")
	}
	fmt.Printf("tunnel closed the pipe: %v\n", err)
	select {
	case err := <-exited:
		fmt.Printf("tunnel exited: %v\n", errString(err))
	case <-ctx.Done():
		return xerrors.New("the tunnel did not exit after refusing the header")
	}
	fmt.Println("bad header refused")
	return nil
}

func (m *manager) send(msg *vpn.ManagerMessage) error {
	b, err := protobuf.Marshal(msg)
	if err != nil {
		return err
	}
	m.wmu.Lock()
	defer m.wmu.Unlock()
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
	if _, err := m.w.Write(append(hdr[:], b...)); err != nil {
		return xerrors.Errorf("write frame: %w", err)
	}
	return nil
}

func (m *manager) rpc(ctx context.Context, msg *vpn.ManagerMessage) (*vpn.TunnelMessage, error) {
	m.mu.Lock()
	m.nextID++
	id := m.nextID
	ch := make(chan *vpn.TunnelMessage, 1)
	m.pending[id] = ch
	m.mu.Unlock()
	msg.Rpc = &vpn.RPC{MsgId: id}
	if err := m.send(msg); err != nil {
		return nil, err
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, xerrors.Errorf("the tunnel closed the pipe: %v", m.readErr)
		}
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (m *manager) readLoop() {
	defer func() {
		m.mu.Lock()
		for id, ch := range m.pending {
			close(ch)
			delete(m.pending, id)
		}
		m.mu.Unlock()
	}()
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(m.r, hdr[:]); err != nil {
			m.readErr = err
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > maxFrame {
			m.readErr = xerrors.Errorf("frame of %d bytes over the 16 MiB cap", n)
			return
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(m.r, b); err != nil {
			m.readErr = err
			return
		}
		msg := &vpn.TunnelMessage{}
		if err := protobuf.Unmarshal(b, msg); err != nil {
			m.readErr = xerrors.Errorf("decode TunnelMessage: %w", err)
			return
		}
		m.handle(msg)
	}
}

func (m *manager) handle(msg *vpn.TunnelMessage) {
	if rt := msg.GetRpc().GetResponseTo(); rt != 0 {
		m.mu.Lock()
		ch := m.pending[rt]
		delete(m.pending, rt)
		m.mu.Unlock()
		if ch != nil {
			ch <- msg
		}
	}
	switch {
	case msg.GetLog() != nil:
		l := msg.GetLog()
		fmt.Fprintf(os.Stderr, "tunnel log [%s] %s: %s\n", l.Level, strings.Join(l.LoggerNames, "."), l.Message)
	case msg.GetPeerUpdate() != nil && msg.GetRpc().GetResponseTo() == 0:
		m.applyPeerUpdate(msg.GetPeerUpdate())
	case msg.GetNetworkSettings() != nil:
		ns := msg.GetNetworkSettings()
		m.mu.Lock()
		m.settings = append(m.settings, ns)
		m.lastSettings = time.Now()
		m.mu.Unlock()
		fmt.Printf("network settings: mtu=%d ipv6=%v dns=%v\n", ns.Mtu, ns.GetIpv6Settings().GetAddrs(), ns.GetDnsSettings().GetServers())
		reply := &vpn.ManagerMessage{
			Rpc: &vpn.RPC{ResponseTo: msg.GetRpc().GetMsgId()},
			Msg: &vpn.ManagerMessage_NetworkSettings{NetworkSettings: &vpn.NetworkSettingsResponse{Success: true}},
		}
		if err := m.send(reply); err != nil {
			fmt.Fprintf(os.Stderr, "reply to network settings: %v\n", err)
		}
	}
}

func (m *manager) applyPeerUpdate(u *vpn.PeerUpdate) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.agents == nil {
		m.agents = map[string]*vpn.Agent{}
	}
	for _, a := range u.DeletedAgents {
		delete(m.agents, string(a.Id))
	}
	for _, a := range u.UpsertedAgents {
		m.agents[string(a.Id)] = a
	}
	if m.changed != nil {
		close(m.changed)
		m.changed = nil
	}
}

func (m *manager) waitAgents(ctx context.Context, n int, wantP2P bool) ([]*vpn.Agent, error) {
	for {
		m.mu.Lock()
		var out []*vpn.Agent
		p2p := false
		for _, a := range m.agents {
			if len(a.Fqdn) > 0 && len(a.IpAddrs) > 0 {
				out = append(out, a)
				p2p = p2p || a.GetLastPing().GetDidP2P()
			}
		}
		if len(out) >= n && (!wantP2P || p2p) {
			m.mu.Unlock()
			sort.Slice(out, func(i, j int) bool { return out[i].Fqdn[0] < out[j].Fqdn[0] })
			return out, nil
		}
		ch := make(chan struct{})
		m.changed = ch
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, xerrors.Errorf("waiting for %d agents (p2p %v): have %d: %w", n, wantP2P, len(out), ctx.Err())
		}
	}
}

func fetch(ctx context.Context, url, socks5 string) (string, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	if socks5 != "" {
		d, err := proxy.SOCKS5("tcp", socks5, nil, proxy.Direct)
		if err != nil {
			return "", err
		}
		cd, ok := d.(proxy.ContextDialer)
		if !ok {
			return "", xerrors.New("the SOCKS5 dialer has no DialContext")
		}
		tr.DialContext = cd.DialContext
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", xerrors.Errorf("status %s", resp.Status)
	}
	return string(b), nil
}

func firstLine(body, containing string) string {
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, containing) {
			return l
		}
	}
	return strings.SplitN(body, "\n", 2)[0]
}

func errString(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

// writeDump: every NetworkSettings request as protojson, and the get_peer_update reply's
// workspaces and agents (names, fqdns, addresses; the random IDs left out).
func (m *manager) writeDump(path string, pu *vpn.PeerUpdate) error {
	m.mu.Lock()
	var settings []json.RawMessage
	for _, s := range m.settings {
		b, err := protojson.Marshal(s)
		if err != nil {
			m.mu.Unlock()
			return err
		}
		settings = append(settings, b)
	}
	m.mu.Unlock()
	type agent struct {
		Name      string   `json:"name"`
		Workspace string   `json:"workspace"`
		FQDN      []string `json:"fqdn"`
		IPAddrs   []string `json:"ip_addrs"`
		Handshake bool     `json:"has_last_handshake"`
	}
	wsName := map[string]string{}
	var workspaces []map[string]string
	for _, w := range pu.GetUpsertedWorkspaces() {
		wsName[string(w.Id)] = w.Name
		workspaces = append(workspaces, map[string]string{"name": w.Name, "status": w.Status.String()})
	}
	var agents []agent
	for _, a := range pu.GetUpsertedAgents() {
		agents = append(agents, agent{Name: a.Name, Workspace: wsName[string(a.WorkspaceId)], FQDN: a.Fqdn, IPAddrs: a.IpAddrs, Handshake: a.LastHandshake != nil})
	}
	sort.Slice(agents, func(i, j int) bool { return agents[i].Workspace < agents[j].Workspace })
	sort.Slice(workspaces, func(i, j int) bool { return workspaces[i]["name"] < workspaces[j]["name"] })
	b, err := json.MarshalIndent(map[string]any{"network_settings": settings, "workspaces": workspaces, "agents": agents}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

func (m *manager) settleSettings(quiet, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		m.mu.Lock()
		last := m.lastSettings
		haveDNS := false
		for _, s := range m.settings {
			if s.GetDnsSettings() != nil {
				haveDNS = len(s.GetDnsSettings().GetServers()) > 0
			}
		}
		m.mu.Unlock()
		if haveDNS && time.Since(last) >= quiet {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
