//! The tunnel role against a manager speaking the real protocol over a socket pair
//! (codervpn-protocol.md §6, checklist #32–#44). The session is a fake, as in Go's
//! `TestTunnel_*` tests: these tests are about the protocol, not about joining.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use codervpn_engine::logs::ManagerLogLayer;
use codervpn_engine::session::{
    BoxFuture, Connector, ManagerLink, Session, StartParams, TELEMETRY_HEADER,
};
use codervpn_engine::tunnel::{TunnelExit, TunnelOptions, serve};
use codervpn_proto::vpn::{self, ManagerMessage, TunnelMessage, manager_message, tunnel_message};
use codervpn_proto::{Connection, Incoming, ManagerSide, TunnelSide, VersionList};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tracing_subscriber::prelude::*;

const T: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Shared {
    params: Option<StartParams>,
    link: Option<ManagerLink>,
    shutdowns: usize,
    wakes: usize,
}

#[derive(Clone, Default)]
struct FakeConnector {
    shared: Arc<Mutex<Shared>>,
    delay: Option<Duration>,
}

struct FakeSession {
    shared: Arc<Mutex<Shared>>,
}

impl Connector for FakeConnector {
    fn connect(
        &self,
        params: StartParams,
        link: ManagerLink,
    ) -> BoxFuture<Result<Box<dyn Session>, String>> {
        let shared = self.shared.clone();
        let delay = self.delay;
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let mut s = shared.lock().unwrap();
            s.params = Some(params);
            s.link = Some(link);
            drop(s);
            Ok(Box::new(FakeSession { shared }) as Box<dyn Session>)
        })
    }
}

impl Session for FakeSession {
    fn peer_snapshot(&self) -> vpn::PeerUpdate {
        vpn::PeerUpdate {
            upserted_workspaces: vec![vpn::Workspace {
                id: vec![1; 16],
                name: "w1".into(),
                status: 3,
            }],
            ..Default::default()
        }
    }
    fn wake(&mut self) -> Result<(), String> {
        self.shared.lock().unwrap().wakes += 1;
        Ok(())
    }
    fn shutdown(self: Box<Self>) -> BoxFuture<Result<(), String>> {
        self.shared.lock().unwrap().shutdowns += 1;
        Box::pin(async { Ok(()) })
    }
}

struct Harness {
    manager: Connection<ManagerSide>,
    tunnel: JoinHandle<TunnelExit>,
}

async fn start_tunnel(opts: TunnelOptions) -> Harness {
    let (a, b) = UnixStream::pair().unwrap();
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let tunnel = tokio::spawn(async move {
        let conn = Connection::<TunnelSide>::handshake(br, bw, VersionList::current())
            .await
            .unwrap();
        serve(conn, opts, std::future::pending()).await
    });
    let manager = Connection::<ManagerSide>::handshake(ar, aw, VersionList::current())
        .await
        .unwrap();
    Harness { manager, tunnel }
}

fn logging() -> tracing::subscriber::DefaultGuard {
    tracing::subscriber::set_default(tracing_subscriber::registry().with(ManagerLogLayer))
}

fn fake() -> (FakeConnector, TunnelOptions) {
    let c = FakeConnector::default();
    (c.clone(), TunnelOptions::new(Arc::new(c)))
}

/// A tunnel whose fake session has started; the session's link to the manager.
async fn started() -> (Harness, ManagerLink) {
    let (connector, opts) = fake();
    let h = start_tunnel(opts).await;
    h.manager.handle().request(start()).await.unwrap();
    let link = connector.shared.lock().unwrap().link.clone().unwrap();
    (h, link)
}

fn msg(m: manager_message::Msg) -> ManagerMessage {
    ManagerMessage {
        rpc: None,
        msg: Some(m),
    }
}

fn start_request() -> vpn::StartRequest {
    vpn::StartRequest {
        tunnel_file_descriptor: 2,
        coder_url: "https://coder.example.com".into(),
        api_token: "fakeSecretToken".into(),
        headers: vec![vpn::start_request::Header {
            name: "X-Test-Header".into(),
            value: "test".into(),
        }],
        device_id: "device001".into(),
        device_os: "macOS".into(),
        coder_desktop_version: "0.24.8".into(),
    }
}

fn start() -> ManagerMessage {
    msg(manager_message::Msg::Start(start_request()))
}

fn stop() -> ManagerMessage {
    msg(manager_message::Msg::Stop(vpn::StopRequest {}))
}

fn start_response(m: &TunnelMessage) -> &vpn::StartResponse {
    match &m.msg {
        Some(tunnel_message::Msg::Start(r)) => r,
        other => panic!("not a StartResponse: {other:?}"),
    }
}

/// Reads one-way messages until one that is not a Log; returns it and the logs seen.
async fn next_non_log(
    m: &mut Connection<ManagerSide>,
) -> (Option<Incoming<TunnelMessage>>, Vec<vpn::Log>) {
    let mut logs = Vec::new();
    loop {
        let item = tokio::time::timeout(T, m.next_incoming()).await.unwrap();
        match item {
            Some(Incoming::OneWay(TunnelMessage {
                msg: Some(tunnel_message::Msg::Log(l)),
                ..
            })) => logs.push(l),
            other => return (other, logs),
        }
    }
}

// checklist #34, #35 (TestTunnel_StartStop)
#[tokio::test]
async fn start_then_stop() {
    let (connector, opts) = fake();
    let h = start_tunnel(opts).await;
    let reply = h.manager.handle().request(start()).await.unwrap();
    assert_eq!(reply.rpc.unwrap().response_to, 1);
    let r = start_response(&reply);
    assert!(r.success, "{}", r.error_message);
    let params = connector.shared.lock().unwrap().params.clone().unwrap();
    assert_eq!(params.coder_url.as_str(), "https://coder.example.com/");
    assert_eq!(params.tunnel_fd, 2);
    assert!(
        params
            .headers
            .contains(&("X-Test-Header".into(), "test".into()))
    );
    assert!(params.headers.iter().any(|(n, _)| n == TELEMETRY_HEADER));

    let reply = h.manager.handle().request(stop()).await.unwrap();
    let Some(tunnel_message::Msg::Stop(s)) = reply.msg else {
        panic!("not a StopResponse")
    };
    assert!(s.success);
    let mut manager = h.manager;
    assert!(
        tokio::time::timeout(T, manager.next_incoming())
            .await
            .unwrap()
            .is_none(),
        "EOF follows the StopResponse"
    );
    assert_eq!(h.tunnel.await.unwrap(), TunnelExit::Stopped);
    assert_eq!(connector.shared.lock().unwrap().shutdowns, 1);
}

// checklist #36
#[tokio::test]
async fn start_without_url_or_token_fails() {
    let (connector, opts) = fake();
    let h = start_tunnel(opts).await;
    for (field, want) in [("url", "missing coder url"), ("token", "missing api token")] {
        let mut req = start_request();
        match field {
            "url" => req.coder_url.clear(),
            _ => req.api_token.clear(),
        }
        let reply = h
            .manager
            .handle()
            .request(msg(manager_message::Msg::Start(req)))
            .await
            .unwrap();
        let r = start_response(&reply);
        assert!(!r.success);
        assert_eq!(r.error_message, want);
    }
    assert!(
        connector.shared.lock().unwrap().params.is_none(),
        "nothing was dialled"
    );
}

#[tokio::test]
async fn start_against_an_unreachable_deployment_fails_naming_the_host() {
    let connector = codervpn_engine::session::join::TailnetConnector::default();
    let h = start_tunnel(TunnelOptions::new(Arc::new(connector))).await;
    let mut req = start();
    if let Some(manager_message::Msg::Start(s)) = &mut req.msg {
        s.coder_url = "http://127.0.0.1:9".into();
    }
    let reply = h.manager.handle().request(req).await.unwrap();
    let r = start_response(&reply);
    assert!(!r.success);
    assert!(
        r.error_message.starts_with("failed to start connection: "),
        "{}",
        r.error_message
    );
    assert!(
        r.error_message
            .contains("cannot reach 127.0.0.1:9 for http://127.0.0.1:9/api/v2/users/me"),
        "{}",
        r.error_message
    );
    // the tunnel stays alive after a failed start and still answers
    let reply = h
        .manager
        .handle()
        .request(msg(manager_message::Msg::GetPeerUpdate(
            vpn::GetPeerUpdate {},
        )))
        .await
        .unwrap();
    assert!(matches!(
        reply.msg,
        Some(tunnel_message::Msg::PeerUpdate(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn start_gives_up_after_the_timeout() {
    let connector = FakeConnector {
        delay: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    let h = start_tunnel(TunnelOptions::new(Arc::new(connector))).await;
    let reply = h.manager.handle().request(start()).await.unwrap();
    let r = start_response(&reply);
    assert!(!r.success);
    assert_eq!(
        r.error_message,
        "failed to start connection: gave up after 60s"
    );
}

#[tokio::test]
async fn start_while_running_keeps_the_session_and_succeeds() {
    let (connector, opts) = fake();
    let h = start_tunnel(opts).await;
    assert!(start_response(&h.manager.handle().request(start()).await.unwrap()).success);
    let first = connector.shared.lock().unwrap().link.is_some();
    let mut req = start_request();
    req.coder_url = "https://other.example.com".into();
    let reply = h
        .manager
        .handle()
        .request(msg(manager_message::Msg::Start(req)))
        .await
        .unwrap();
    assert!(start_response(&reply).success);
    assert!(first);
    let params = connector.shared.lock().unwrap().params.clone().unwrap();
    assert_eq!(
        params.coder_url.host_str(),
        Some("coder.example.com"),
        "the running session is unchanged"
    );
}

#[tokio::test]
async fn get_peer_update_before_start_is_empty_and_after_start_is_the_snapshot() {
    let (_, opts) = fake();
    let h = start_tunnel(opts).await;
    let get = || msg(manager_message::Msg::GetPeerUpdate(vpn::GetPeerUpdate {}));
    let reply = h.manager.handle().request(get()).await.unwrap();
    assert_eq!(
        reply.msg,
        Some(tunnel_message::Msg::PeerUpdate(vpn::PeerUpdate::default()))
    );
    h.manager.handle().request(start()).await.unwrap();
    let reply = h.manager.handle().request(get()).await.unwrap();
    let Some(tunnel_message::Msg::PeerUpdate(u)) = reply.msg else {
        panic!()
    };
    assert_eq!(u.upserted_workspaces[0].name, "w1");
}

// checklist #32
#[tokio::test]
async fn request_without_payload_gets_a_bare_reply_and_a_warning() {
    let _log = logging();
    let (_, opts) = fake();
    let mut h = start_tunnel(opts).await;
    let reply = h
        .manager
        .handle()
        .request(ManagerMessage {
            rpc: None,
            msg: None,
        })
        .await
        .unwrap();
    assert_eq!(
        reply,
        TunnelMessage {
            rpc: Some(vpn::Rpc {
                msg_id: 0,
                response_to: 1
            }),
            msg: None
        }
    );
    // a network_settings response sent as a request is also unhandled
    let reply = h
        .manager
        .handle()
        .request(msg(manager_message::Msg::NetworkSettings(
            vpn::NetworkSettingsResponse::default(),
        )))
        .await
        .unwrap();
    assert_eq!(reply.msg, None);
    // The warning was queued before the reply, so it has already arrived.
    let mut warnings = 0;
    while let Ok(Some(Incoming::OneWay(m))) =
        tokio::time::timeout(Duration::from_millis(200), h.manager.next_incoming()).await
    {
        if let Some(tunnel_message::Msg::Log(l)) = m.msg
            && l.message == "unhandled manager request"
        {
            assert_eq!(l.level, vpn::log::Level::Warn as i32);
            warnings += 1;
        }
    }
    assert_eq!(warnings, 2);
}

// checklist #33, and the logs themselves (§9)
#[tokio::test]
async fn message_without_rpc_is_not_answered_and_logged_as_critical() {
    let _log = logging();
    let (_, opts) = fake();
    let mut h = start_tunnel(opts).await;
    h.manager
        .handle()
        .notify(msg(manager_message::Msg::GetPeerUpdate(
            vpn::GetPeerUpdate {},
        )))
        .await
        .unwrap();
    let critical = loop {
        match tokio::time::timeout(T, h.manager.next_incoming())
            .await
            .unwrap()
        {
            Some(Incoming::OneWay(TunnelMessage {
                msg: Some(tunnel_message::Msg::Log(l)),
                ..
            })) if l.message.contains("unknown request") => {
                break l;
            }
            Some(Incoming::OneWay(TunnelMessage {
                msg: Some(tunnel_message::Msg::Log(_)),
                ..
            })) => {}
            other => panic!("the tunnel answered a message that had no rpc: {other:?}"),
        }
    };
    assert_eq!(critical.level, vpn::log::Level::Critical as i32);
    assert_eq!(critical.logger_names, ["vpn", "tunnel"]);
    assert!(
        critical
            .fields
            .iter()
            .any(|f| f.name == "kind" && f.value == "get_peer_update"),
        "{critical:?}"
    );
    assert!(critical.fields.iter().all(|f| f.name != "critical"));
}

#[tokio::test]
async fn logs_never_contain_the_token_or_header_values() {
    let _log = logging();
    let (_, opts) = fake();
    let mut h = start_tunnel(opts).await;
    h.manager.handle().request(start()).await.unwrap();
    h.manager.handle().request(stop()).await.unwrap();
    let mut all = Vec::new();
    loop {
        let (item, logs) = next_non_log(&mut h.manager).await;
        all.extend(logs);
        if item.is_none() {
            break;
        }
    }
    assert!(
        all.iter().any(|l| l.message == "starting tunnel"),
        "{all:?}"
    );
    let text = format!("{all:?}");
    assert!(!text.contains("fakeSecretToken"), "{text}");
    assert!(!text.contains("device001"), "{text}");
    assert!(
        all.iter()
            .all(|l| l.logger_names.first().map(String::as_str) == Some("vpn"))
    );
}

// checklist #37 (TestTunnel_StopConcurrentSenders), #39
#[tokio::test]
async fn stop_with_requests_in_flight_ends_with_stop_response_and_fails_them_locally() {
    let (mut h, link) = started().await;
    let in_flight = {
        let link = link.clone();
        tokio::spawn(async move {
            link.network_settings(vpn::NetworkSettingsRequest {
                mtu: 1200,
                ..Default::default()
            })
            .await
        })
    };
    // The manager sees the request but does not answer it; it sends stop instead.
    let (item, _) = next_non_log(&mut h.manager).await;
    let Some(Incoming::Request {
        msg:
            TunnelMessage {
                msg: Some(tunnel_message::Msg::NetworkSettings(ns)),
                ..
            },
        ..
    }) = item
    else {
        panic!("expected a NetworkSettingsRequest, got {item:?}");
    };
    assert_eq!(ns.mtu, 1200);
    let mut raw_stop = stop();
    raw_stop.rpc = None;
    let stop_reply = h.manager.handle().request(raw_stop).await.unwrap();
    assert!(matches!(
        stop_reply.msg,
        Some(tunnel_message::Msg::Stop(vpn::StopResponse {
            success: true,
            ..
        }))
    ));
    assert!(
        tokio::time::timeout(T, in_flight)
            .await
            .unwrap()
            .unwrap()
            .is_err(),
        "in-flight request failed"
    );
    let later = link
        .network_settings(vpn::NetworkSettingsRequest::default())
        .await;
    assert!(later.is_err(), "later requests fail locally");
    let update = link.peer_update(vpn::PeerUpdate::default()).await;
    assert!(update.is_err(), "a workspace update after stop is rejected");
    let (item, _) = next_non_log(&mut h.manager).await;
    assert!(item.is_none(), "nothing after the StopResponse: {item:?}");
}

// checklist #38
#[tokio::test]
async fn stop_before_start_succeeds_then_eof() {
    let (connector, opts) = fake();
    let mut h = start_tunnel(opts).await;
    let reply = h.manager.handle().request(stop()).await.unwrap();
    assert!(matches!(
        reply.msg,
        Some(tunnel_message::Msg::Stop(vpn::StopResponse {
            success: true,
            ..
        }))
    ));
    assert!(
        tokio::time::timeout(T, h.manager.next_incoming())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(connector.shared.lock().unwrap().shutdowns, 0);
}

// checklist #41 (TestTunnel_StopBlockedUpdater)
#[tokio::test]
async fn stop_releases_a_sender_blocked_on_a_manager_that_does_not_read() {
    let (mut h, link) = started().await;
    let big = vpn::PeerUpdate {
        upserted_workspaces: (0..2000)
            .map(|i| vpn::Workspace {
                id: vec![7; 16],
                name: format!("workspace-{i}"),
                status: 3,
            })
            .collect(),
        ..Default::default()
    };
    let flooder = tokio::spawn(async move {
        let mut sent = 0usize;
        while link.peer_update(big.clone()).await.is_ok() {
            sent += 1;
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !flooder.is_finished(),
        "the flooder is blocked on the full pipe"
    );
    let stopper = {
        let handle = h.manager.handle().clone();
        tokio::spawn(async move { handle.request(stop()).await })
    };
    // Now read everything: peer updates, then the StopResponse, then EOF.
    let mut last = None;
    while let Some(item) = tokio::time::timeout(T, h.manager.next_incoming())
        .await
        .unwrap()
    {
        last = Some(item);
    }
    let _ = last;
    let reply = stopper.await.unwrap().unwrap();
    assert!(matches!(reply.msg, Some(tunnel_message::Msg::Stop(_))));
    tokio::time::timeout(T, flooder).await.unwrap().unwrap();
    assert_eq!(h.tunnel.await.unwrap(), TunnelExit::Stopped);
}

#[tokio::test]
async fn manager_hang_up_tears_the_session_down() {
    let (connector, opts) = fake();
    let h = start_tunnel(opts).await;
    h.manager.handle().request(start()).await.unwrap();
    drop(h.manager);
    let exit = tokio::time::timeout(T, h.tunnel).await.unwrap().unwrap();
    assert!(matches!(exit, TunnelExit::ManagerGone(_)), "{exit:?}");
    assert_eq!(connector.shared.lock().unwrap().shutdowns, 1);
}

// checklist #43
#[tokio::test]
async fn wake_is_answered_before_and_after_start() {
    let (connector, opts) = fake();
    let h = start_tunnel(opts).await;
    assert_eq!(h.manager.negotiated().to_string(), "1.3");
    let wake = || msg(manager_message::Msg::Wake(vpn::WakeRequest {}));
    let reply = h.manager.handle().request(wake()).await.unwrap();
    assert_eq!(
        reply.msg,
        Some(tunnel_message::Msg::Wake(vpn::WakeResponse {}))
    );
    assert_eq!(reply.rpc.unwrap().response_to, 1);
    h.manager.handle().request(start()).await.unwrap();
    let reply = h.manager.handle().request(wake()).await.unwrap();
    assert_eq!(
        reply.msg,
        Some(tunnel_message::Msg::Wake(vpn::WakeResponse {}))
    );
    assert_eq!(connector.shared.lock().unwrap().wakes, 1);
}

#[tokio::test]
async fn network_settings_reply_reaches_the_session() {
    let (mut h, link) = started().await;
    let ask = tokio::spawn(async move {
        let ok = link
            .network_settings(vpn::NetworkSettingsRequest {
                mtu: 1200,
                ..Default::default()
            })
            .await;
        let refused = link
            .network_settings(vpn::NetworkSettingsRequest {
                mtu: 1,
                ..Default::default()
            })
            .await;
        (ok, refused)
    });
    // checklist #58, #59
    for (success, error) in [(true, ""), (false, "x")] {
        let (item, _) = next_non_log(&mut h.manager).await;
        let Some(Incoming::Request { id, .. }) = item else {
            panic!("{item:?}")
        };
        assert_ne!(id, 0);
        let answer = msg(manager_message::Msg::NetworkSettings(
            vpn::NetworkSettingsResponse {
                success,
                error_message: error.into(),
            },
        ));
        h.manager.handle().reply(id, answer).await.unwrap();
    }
    let (ok, refused) = ask.await.unwrap();
    assert_eq!(ok, Ok(()));
    assert_eq!(
        refused.unwrap_err().to_string(),
        "the manager refused the network settings: x"
    );
}
