//! The SOCKS5 codec and one client's handshake, against a fake connector.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use super::*;

const V4_TARGET: [u8; 10] = [5, 1, 0, 1, 10, 202, 0, 2, 0, 80];

fn v6_request(cmd: u8) -> Vec<u8> {
    let mut r = vec![5, cmd, 0, 4];
    r.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
    r.extend_from_slice(&443u16.to_be_bytes());
    r
}

fn domain_request(name: &[u8], port: u16) -> Vec<u8> {
    let mut r = vec![5, 1, 0, 3, name.len() as u8];
    r.extend_from_slice(name);
    r.extend_from_slice(&port.to_be_bytes());
    r
}

// --- greeting ----------------------------------------------------------------------------

#[test]
fn greeting_with_no_auth_parses() {
    assert_eq!(
        parse_greeting(&[5, 2, 0, 2]).unwrap(),
        Some((vec![0, 2], 4))
    );
}

#[test]
fn truncated_greeting_asks_for_more() {
    let g = [5, 3, 0, 1, 2];
    for n in 0..g.len() {
        assert_eq!(
            parse_greeting(&g[..n]).unwrap(),
            None,
            "prefix of {n} bytes"
        );
    }
}

#[test]
fn socks4_greeting_is_refused_as_another_version() {
    assert!(matches!(
        parse_greeting(&[4, 1, 0, 80]),
        Err(Socks5Error::Version(4))
    ));
}

#[test]
fn greeting_without_methods_is_refused() {
    assert!(matches!(
        parse_greeting(&[5, 0]),
        Err(Socks5Error::NoMethods)
    ));
}

// --- request -----------------------------------------------------------------------------

#[test]
fn ipv4_connect_request_parses() {
    let (r, n) = parse_request(&V4_TARGET).unwrap().unwrap();
    assert_eq!(n, 10);
    assert_eq!(
        r,
        Request {
            command: Command::Connect,
            target: Target::Addr("10.202.0.2:80".parse().unwrap())
        }
    );
}

#[test]
fn ipv6_connect_request_parses() {
    let (r, n) = parse_request(&v6_request(1)).unwrap().unwrap();
    assert_eq!(n, 22);
    assert_eq!(r.target, Target::Addr("[fd00::2]:443".parse().unwrap()));
}

#[test]
fn domain_request_parses_and_keeps_the_name_bytes() {
    let (r, n) = parse_request(&domain_request(b"example.coder", 22))
        .unwrap()
        .unwrap();
    assert_eq!(n, 4 + 1 + 13 + 2);
    assert_eq!(
        r.target,
        Target::Domain {
            name: b"example.coder".to_vec(),
            port: 22
        }
    );
}

#[test]
fn other_commands_parse_so_they_can_be_answered() {
    for (byte, cmd) in [
        (2, Command::Bind),
        (3, Command::UdpAssociate),
        (9, Command::Other(9)),
    ] {
        let mut req = V4_TARGET;
        req[1] = byte;
        assert_eq!(parse_request(&req).unwrap().unwrap().0.command, cmd);
    }
}

#[test]
fn truncated_requests_ask_for_more() {
    for req in [V4_TARGET.to_vec(), v6_request(1), domain_request(b"x.y", 1)] {
        for n in 0..req.len() {
            assert_eq!(
                parse_request(&req[..n]).unwrap(),
                None,
                "prefix of {n} of {req:?}"
            );
        }
    }
}

#[test]
fn unknown_address_type_is_refused() {
    assert!(matches!(
        parse_request(&[5, 1, 0, 7, 1, 2, 3, 4, 0, 80]),
        Err(Socks5Error::AddressType(7))
    ));
}

#[test]
fn empty_domain_name_is_refused() {
    assert!(matches!(
        parse_request(&[5, 1, 0, 3, 0, 0, 80]),
        Err(Socks5Error::EmptyDomain)
    ));
}

#[test]
fn request_with_a_wrong_version_is_refused() {
    assert!(matches!(
        parse_request(&[4, 1, 0, 1]),
        Err(Socks5Error::Version(4))
    ));
}

#[test]
fn every_byte_string_parses_or_fails_without_panicking() {
    // A cheap deterministic fuzz: xorshift bytes, every length up to 300.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = Vec::new();
    for len in 0..300 {
        buf.clear();
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.push(x as u8);
        }
        if let Some(b) = buf.first_mut() {
            *b = 5; // get past the version check most of the time
        }
        let _ = parse_greeting(&buf);
        if let Ok(Some((_, n))) = parse_request(&buf) {
            assert!(n <= buf.len());
        }
    }
}

// --- replies -----------------------------------------------------------------------------

#[test]
fn reply_encodes_an_ipv4_bound_address() {
    assert_eq!(
        encode_reply(Reply::Succeeded, "10.202.0.1:4242".parse().unwrap()),
        [5, 0, 0, 1, 10, 202, 0, 1, 0x10, 0x92]
    );
}

#[test]
fn reply_encodes_an_ipv6_bound_address() {
    let r = encode_reply(Reply::HostUnreachable, "[fd00::1]:1".parse().unwrap());
    assert_eq!(r.len(), 22);
    assert_eq!(&r[..4], &[5, 4, 0, 4]);
    assert_eq!(&r[20..], &[0, 1]);
}

#[test]
fn connect_errors_map_to_their_reply_codes() {
    let to: SocketAddr = "10.202.0.2:80".parse().unwrap();
    assert_eq!(
        reply_for(&ConnectError::Refused { to }),
        Reply::ConnectionRefused
    );
    assert_eq!(
        reply_for(&ConnectError::TimedOut { to }),
        Reply::HostUnreachable
    );
    assert_eq!(
        reply_for(&ConnectError::Unreachable { to, why: "x" }),
        Reply::NetworkUnreachable
    );
    assert_eq!(
        reply_for(&ConnectError::TooManyConnections { max: 1 }),
        Reply::GeneralFailure
    );
    assert_eq!(
        reply_for(&ConnectError::StackStopped),
        Reply::GeneralFailure
    );
}

#[test]
fn only_ip_literals_count_as_domain_targets() {
    assert_eq!(
        literal_target(b"10.202.0.2", 80),
        Some("10.202.0.2:80".parse().unwrap())
    );
    assert_eq!(
        literal_target(b"fd00::2", 80),
        Some("[fd00::2]:80".parse().unwrap())
    );
    assert_eq!(
        literal_target(b"[fd00::2]", 80),
        Some("[fd00::2]:80".parse().unwrap())
    );
    assert_eq!(literal_target(b"example.coder", 80), None);
    assert_eq!(literal_target(b"10.202.0.2:80", 80), None);
    assert_eq!(literal_target(&[0xff, 0xfe], 80), None);
}

// --- one client, end to end, against a fake connector ------------------------------------

/// Answers every connect with `result`; on success hands the far end of a pipe, with the
/// address asked for, to the test.
#[derive(Clone)]
struct Fake {
    result: Result<(), ConnectError>,
    remotes: mpsc::UnboundedSender<(SocketAddr, DuplexStream)>,
}

impl TcpConnector for Fake {
    type Stream = DuplexStream;
    async fn connect(&self, to: SocketAddr) -> Result<DuplexStream, ConnectError> {
        self.result.clone()?;
        let (ours, theirs) = tokio::io::duplex(1024);
        let _ = self.remotes.send((to, theirs));
        Ok(ours)
    }
}

struct Run {
    client: DuplexStream,
    remotes: mpsc::UnboundedReceiver<(SocketAddr, DuplexStream)>,
    server: tokio::task::JoinHandle<Result<(SocketAddr, u64, u64), Socks5Error>>,
}

fn start(result: Result<(), ConnectError>) -> Run {
    start_with(result, None)
}

fn start_with(result: Result<(), ConnectError>, credentials: Option<Credentials>) -> Run {
    let (client, server_end) = tokio::io::duplex(4096);
    let (tx, remotes) = mpsc::unbounded_channel();
    let fake = Arc::new(Fake {
        result,
        remotes: tx,
    });
    let server =
        tokio::spawn(async move { handle_client(server_end, &*fake, credentials.as_ref()).await });
    Run {
        client,
        remotes,
        server,
    }
}

/// Sends `bytes`, then returns everything the server wrote before closing, and its result.
async fn exchange(
    result: Result<(), ConnectError>,
    bytes: &[u8],
) -> (Vec<u8>, Result<(SocketAddr, u64, u64), Socks5Error>) {
    let mut run = start(result);
    run.client.write_all(bytes).await.unwrap();
    run.client.shutdown().await.unwrap();
    let mut got = Vec::new();
    run.client.read_to_end(&mut got).await.unwrap();
    (got, run.server.await.unwrap())
}

fn with_greeting(request: &[u8]) -> Vec<u8> {
    let mut b = vec![5, 1, 0];
    b.extend_from_slice(request);
    b
}

const OK_METHOD: [u8; 2] = [5, 0];

fn reply(code: Reply) -> Vec<u8> {
    let mut r = OK_METHOD.to_vec();
    r.extend_from_slice(&[5, code as u8, 0, 1, 0, 0, 0, 0, 0, 0]);
    r
}

#[tokio::test]
async fn connect_succeeds_and_bytes_flow_both_ways_with_half_close() {
    let mut run = start(Ok(()));
    // The first payload bytes ride in the same write as the request.
    let mut hello = with_greeting(&V4_TARGET);
    hello.extend_from_slice(b"GET /");
    run.client.write_all(&hello).await.unwrap();
    let mut r = [0u8; 12];
    run.client.read_exact(&mut r).await.unwrap();
    assert_eq!(r.to_vec(), reply(Reply::Succeeded));
    let (to, mut remote) = run.remotes.recv().await.unwrap();
    assert_eq!(to, "10.202.0.2:80".parse().unwrap());
    run.client.write_all(b" HTTP/1.0\r\n\r\n").await.unwrap();
    run.client.shutdown().await.unwrap();
    let mut asked = Vec::new();
    remote.read_to_end(&mut asked).await.unwrap();
    assert_eq!(asked, b"GET / HTTP/1.0\r\n\r\n");
    // The client's half is closed; the remote's answer must still arrive.
    remote.write_all(b"hello").await.unwrap();
    drop(remote);
    let mut answer = Vec::new();
    run.client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"hello");
    let (to, up, down) = run.server.await.unwrap().unwrap();
    assert_eq!((to.port(), up, down), (80, 18, 5));
}

#[tokio::test]
async fn ipv6_and_literal_domain_targets_connect_to_their_address() {
    for (req, want) in [
        (v6_request(1), "[fd00::2]:443"),
        (domain_request(b"10.202.0.2", 8080), "10.202.0.2:8080"),
        (domain_request(b"[fd00::2]", 22), "[fd00::2]:22"),
    ] {
        let mut run = start(Ok(()));
        run.client.write_all(&with_greeting(&req)).await.unwrap();
        let mut r = [0u8; 12];
        run.client.read_exact(&mut r).await.unwrap();
        assert_eq!(r[3], Reply::Succeeded as u8);
        assert_eq!(run.remotes.recv().await.unwrap().0, want.parse().unwrap());
    }
}

#[tokio::test]
async fn refused_connection_replies_0x05_and_closes() {
    let to = "10.202.0.2:80".parse().unwrap();
    let (got, res) = exchange(
        Err(ConnectError::Refused { to }),
        &with_greeting(&V4_TARGET),
    )
    .await;
    assert_eq!(got, reply(Reply::ConnectionRefused));
    assert!(matches!(
        res,
        Err(Socks5Error::Connect(ConnectError::Refused { .. }))
    ));
}

#[tokio::test]
async fn timed_out_connection_replies_host_unreachable() {
    let to = "10.202.0.2:80".parse().unwrap();
    let (got, _) = exchange(
        Err(ConnectError::TimedOut { to }),
        &with_greeting(&V4_TARGET),
    )
    .await;
    assert_eq!(got, reply(Reply::HostUnreachable));
}

#[tokio::test]
async fn unroutable_target_replies_network_unreachable() {
    let to = "10.202.0.2:80".parse().unwrap();
    let (got, _) = exchange(
        Err(ConnectError::Unreachable {
            to,
            why: "no route",
        }),
        &with_greeting(&V4_TARGET),
    )
    .await;
    assert_eq!(got, reply(Reply::NetworkUnreachable));
}

#[tokio::test]
async fn bind_and_udp_associate_reply_command_not_supported() {
    for cmd in [2u8, 3, 0x7f] {
        let mut req = V4_TARGET;
        req[1] = cmd;
        let (got, res) = exchange(Ok(()), &with_greeting(&req)).await;
        assert_eq!(got, reply(Reply::CommandNotSupported));
        assert!(matches!(res, Err(Socks5Error::Command(_))));
    }
}

#[tokio::test]
async fn host_name_target_replies_host_unreachable() {
    let (got, res) = exchange(
        Ok(()),
        &with_greeting(&domain_request(b"web.main.alice.coder", 80)),
    )
    .await;
    assert_eq!(got, reply(Reply::HostUnreachable));
    let Err(Socks5Error::HostName(name)) = res else {
        panic!("{res:?}")
    };
    assert_eq!(name, "web.main.alice.coder:80");
}

#[tokio::test]
async fn unknown_address_type_replies_0x08() {
    let (got, res) = exchange(Ok(()), &with_greeting(&[5, 1, 0, 9, 1, 2, 3, 4, 0, 80])).await;
    assert_eq!(got, reply(Reply::AddressTypeNotSupported));
    assert!(matches!(res, Err(Socks5Error::AddressType(9))));
}

#[tokio::test]
async fn client_without_no_auth_gets_no_acceptable_methods() {
    let (got, res) = exchange(Ok(()), &[5, 1, 2]).await;
    assert_eq!(got, [5, 0xFF]);
    assert!(matches!(res, Err(Socks5Error::NoAcceptableMethod(m, _)) if m == [2]));
}

#[tokio::test]
async fn socks4_client_is_closed_without_a_reply() {
    let (got, res) = exchange(Ok(()), &[4, 1, 0, 80, 10, 202, 0, 2, 0]).await;
    assert!(got.is_empty());
    assert!(matches!(res, Err(Socks5Error::Version(4))));
}

#[tokio::test]
async fn client_closing_mid_greeting_or_mid_request_is_a_truncation() {
    let (got, res) = exchange(Ok(()), &[5, 2, 0]).await;
    assert!(got.is_empty());
    assert!(
        matches!(res, Err(Socks5Error::Truncated("greeting"))),
        "{res:?}"
    );
    let (got, res) = exchange(Ok(()), &with_greeting(&V4_TARGET[..7])).await;
    assert_eq!(got, OK_METHOD);
    assert!(
        matches!(res, Err(Socks5Error::Truncated("request"))),
        "{res:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn silent_client_times_out_in_the_handshake() {
    let run = start(Ok(()));
    let res = run.server.await.unwrap();
    assert!(matches!(res, Err(Socks5Error::HandshakeTimeout)), "{res:?}");
    drop(run.client);
}

#[tokio::test]
async fn garbage_after_the_greeting_never_panics() {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for len in 1..80 {
        let mut bytes = vec![5, 1, 0, 5];
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push(x as u8);
        }
        let (_got, res) = exchange(Err(ConnectError::StackStopped), &bytes).await;
        assert!(res.is_err());
    }
}

// --- username/password (RFC 1929) ------------------------------------------------------

#[test]
fn user_pass_message_parses_and_asks_for_more_until_whole() {
    let msg = [1, 3, b'b', b'o', b'b', 2, b'p', b'w', 0xAA];
    for cut in 0..msg.len() - 1 {
        assert!(
            matches!(parse_user_pass(&msg[..cut]), Ok(None)),
            "cut {cut}"
        );
    }
    let (user, pass, used) = parse_user_pass(&msg).unwrap().unwrap();
    assert_eq!(
        (user.as_slice(), pass.as_slice(), used),
        (&b"bob"[..], &b"pw"[..], 8)
    );
    assert!(matches!(
        parse_user_pass(&[5, 1, b'x']),
        Err(Socks5Error::AuthVersion(5))
    ));
    assert!(matches!(
        parse_user_pass(&[1, 0, 1, b'p']),
        Err(Socks5Error::EmptyCredentials)
    ));
}

/// A greeting offering methods 0 and 2, a username/password message, then a request.
fn login_then_request(user: &[u8], pass: &[u8]) -> Vec<u8> {
    let mut msg = vec![5, 2, 0, 2, 1, user.len() as u8];
    msg.extend_from_slice(user);
    msg.push(pass.len() as u8);
    msg.extend_from_slice(pass);
    msg.extend_from_slice(&v6_request(1));
    msg
}

fn creds() -> Credentials {
    Credentials::new("codervpn", "hunter2").unwrap()
}

async fn exchange_with(bytes: &[u8]) -> (Vec<u8>, Result<(SocketAddr, u64, u64), Socks5Error>) {
    let mut run = start_with(Err(ConnectError::StackStopped), Some(creds()));
    run.client.write_all(bytes).await.unwrap();
    run.client.shutdown().await.unwrap();
    let mut got = Vec::new();
    run.client.read_to_end(&mut got).await.unwrap();
    (got, run.server.await.unwrap())
}

#[tokio::test]
async fn with_credentials_no_auth_alone_is_not_acceptable() {
    let (got, res) = exchange_with(&[5, 1, 0]).await;
    assert_eq!(got, [5, 0xFF]);
    assert!(
        matches!(res, Err(Socks5Error::NoAcceptableMethod(m, "username/password")) if m == [0])
    );
}

#[tokio::test]
async fn wrong_password_is_answered_failure_and_closed() {
    let msg = login_then_request(b"codervpn", b"hunter3");
    let (got, res) = exchange_with(&msg).await;
    assert_eq!(got, [5, 2, 1, 1], "method 2 chosen, then status 1");
    assert!(matches!(res, Err(Socks5Error::BadCredentials)));
}

#[tokio::test]
async fn right_credentials_go_on_to_the_request() {
    let msg = login_then_request(b"codervpn", b"hunter2");
    let (got, res) = exchange_with(&msg).await;
    // Authenticated; the (fake) stack is stopped, so the request fails after it.
    assert_eq!(&got[..4], &[5, 2, 1, 0]);
    assert_eq!(got[4..6], [5, Reply::GeneralFailure as u8]);
    assert!(matches!(
        res,
        Err(Socks5Error::Connect(ConnectError::StackStopped))
    ));
}
