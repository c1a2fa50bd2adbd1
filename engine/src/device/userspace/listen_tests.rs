//! Inbound TCP, pings and the agent services: two userspace stacks wired back to back
//! through their `Device` sides (no WireGuard), stack A the client and stack B the agent.
//! Pings are real echo requests written into one device, their replies read back out.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::services::{AgentServer, AgentServices};
use super::*;

const A_V4: &str = "10.202.0.1/24";
const A_V6: &str = "fd00::1/64";
const B_V4: &str = "10.202.0.2/24";
const B_V6: &str = "fd00::2/64";
/// Bounds every test: a hang fails instead of stalling the suite.
const LIMIT: Duration = Duration::from_secs(20);

fn config(addresses: [&str; 2]) -> UserspaceConfig {
    let mut cfg = UserspaceConfig::new(addresses.iter().map(|a| a.parse().unwrap()).collect());
    cfg.connect_timeout = Duration::from_secs(2);
    cfg
}

/// The address of `net` (`"fd00::2/64"`) with `port`.
fn at(net: &str, port: u16) -> SocketAddr {
    let net: IpNet = net.parse().unwrap();
    SocketAddr::new(net.addr(), port)
}

/// Stack A (the client) and stack B (the agent, configured by `b_cfg`), their packets
/// pumped into each other.
fn pair(b_cfg: UserspaceConfig) -> (StackHandle, StackHandle) {
    let (a_dev, a) = UserspaceDevice::new(config([A_V4, A_V6])).unwrap();
    let (b_dev, b) = UserspaceDevice::new(b_cfg).unwrap();
    tokio::spawn(pump(a_dev, b_dev));
    (a, b)
}

/// Moves every packet each device sends into the other, until one stops. Packets the
/// other cannot take yet wait here (dropping them would only slow TCP down), retried
/// every millisecond: the device has no "room again" signal to wait for.
async fn pump(a: UserspaceDevice, b: UserspaceDevice) {
    let (mut a_to_b, mut b_to_a) = (VecDeque::new(), VecDeque::new());
    let (mut buf_a, mut buf_b) = (vec![0u8; 65_536], vec![0u8; 65_536]);
    loop {
        if deliver(&b, &mut a_to_b).is_err() || deliver(&a, &mut b_to_a).is_err() {
            return;
        }
        let waiting = !a_to_b.is_empty() || !b_to_a.is_empty();
        tokio::select! {
            r = a.recv(&mut buf_a) => {
                let Ok(n) = r else { return };
                a_to_b.push_back(buf_a[..n].to_vec());
            }
            r = b.recv(&mut buf_b) => {
                let Ok(n) = r else { return };
                b_to_a.push_back(buf_b[..n].to_vec());
            }
            () = tokio::time::sleep(Duration::from_millis(1)), if waiting => {}
        }
    }
}

fn deliver(to: &UserspaceDevice, queue: &mut VecDeque<Vec<u8>>) -> io::Result<()> {
    while let Some(packet) = queue.front() {
        match to.try_send(packet) {
            Ok(()) => {
                queue.pop_front();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A and B, with the agent services listening on B (bound before this returns).
async fn agent(page: &str) -> StackHandle {
    let (a, b) = pair(config([B_V4, B_V6]));
    let services = AgentServices {
        page: page.to_owned(),
        ..AgentServices::default()
    };
    let server = AgentServer::bind(&b, services).await.unwrap();
    tokio::spawn(server.serve());
    a
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

/// Writes `data` and closes the sending half while reading everything back.
async fn round_trip(stream: DuplexStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    got
}

/// Sends `request` to the HTTP port of an agent serving `page`, and reads the whole answer.
async fn http(page: &str, request: &[u8]) -> String {
    let a = agent(page).await;
    let mut s = a.connect(at(B_V6, 80)).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    String::from_utf8(got).unwrap()
}

/// A connection from A to `port` of B's address `b_addr`, accepted by a listener on B.
struct Connected {
    client: DuplexStream,
    served: DuplexStream,
    peer: SocketAddr,
}

async fn connected(b_addr: &str) -> Connected {
    let (a, b) = pair(config([B_V4, B_V6]));
    let mut listener = b.listen(5000).await.unwrap();
    let client = a.connect(at(b_addr, 5000)).await.unwrap();
    let (served, peer) = listener.accept().await.unwrap();
    Connected {
        client,
        served,
        peer,
    }
}

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("test timed out")
}

// ---------------------------------------------------------------------------------------
// Inbound TCP

#[tokio::test]
async fn echo_service_returns_a_megabyte_intact() {
    bounded(async {
        let a = agent("").await;
        let data = pattern(0, 1 << 20);
        let s = a.connect(at(B_V6, 7)).await.unwrap();
        assert!(round_trip(s, data.clone()).await == data, "echo differs");
    })
    .await;
}

#[tokio::test]
async fn concurrent_connections_to_one_port_are_each_served() {
    bounded(async {
        let a = agent("").await;
        let mut clients = Vec::new();
        // More at once than a port keeps listening sockets.
        for seed in 0..12 {
            let a = a.clone();
            clients.push(tokio::spawn(async move {
                let data = pattern(seed, 100_000);
                let s = a.connect(at(B_V4, 7)).await.unwrap();
                round_trip(s, data.clone()).await == data
            }));
        }
        for client in clients {
            assert!(client.await.unwrap(), "a connection got another's bytes");
        }
    })
    .await;
}

#[tokio::test]
async fn accepted_connection_names_the_peer() {
    bounded(async {
        let Connected { peer, .. } = connected(B_V4).await;
        assert_eq!(peer.ip(), at(A_V4, 0).ip());
        assert_ne!(peer.port(), 0);
    })
    .await;
}

#[tokio::test]
async fn closing_the_accepted_stream_ends_the_clients_stream() {
    bounded(async {
        let Connected {
            mut client,
            mut served,
            ..
        } = connected(B_V6).await;
        served.write_all(b"bye").await.unwrap();
        served.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
    })
    .await;
}

#[tokio::test]
async fn peer_reset_fails_the_accepted_streams_writes() {
    bounded(async {
        let Connected {
            client, mut served, ..
        } = connected(B_V6).await;
        // Dropped while the server still sends: stack A resets the connection.
        drop(client);
        let chunk = vec![0u8; 16 * 1024];
        let mut written = 0usize;
        let err = loop {
            match served.write_all(&chunk).await {
                Ok(()) => written += chunk.len(),
                Err(e) => break e,
            }
        };
        assert_eq!(
            err.kind(),
            io::ErrorKind::BrokenPipe,
            "after {written} bytes"
        );
    })
    .await;
}

#[tokio::test]
async fn port_without_listener_refuses_and_a_dropped_listener_frees_its_port() {
    bounded(async {
        let (a, b) = pair(config([B_V4, B_V6]));
        let listener = b.listen(5000).await.unwrap();
        assert_eq!(
            b.listen(5000).await.err(),
            Some(ListenError::PortInUse { port: 5000 })
        );
        drop(listener);
        assert_eq!(
            a.connect(at(B_V6, 5000)).await.unwrap_err(),
            ConnectError::Refused { to: at(B_V6, 5000) }
        );
        let mut again = b.listen(5000).await.unwrap();
        let _client = a.connect(at(B_V6, 5000)).await.unwrap();
        again.accept().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn listening_on_port_zero_is_refused() {
    let (_device, b) = UserspaceDevice::new(config([B_V4, B_V6])).unwrap();
    assert_eq!(b.listen(0).await.err(), Some(ListenError::PortZero));
}

#[tokio::test]
async fn listener_refuses_connections_beyond_max_connections() {
    bounded(async {
        let mut b_cfg = config([B_V4, B_V6]);
        b_cfg.max_connections = 3;
        let (a, b) = pair(b_cfg);
        let mut listener = b.listen(5000).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(a.connect(at(B_V6, 5000)).await.unwrap());
            held.push(listener.accept().await.unwrap().0);
        }
        assert!(matches!(
            a.connect(at(B_V6, 5000)).await,
            Err(ConnectError::Refused { .. })
        ));
        // Both ends of one connection close: its slot comes back to the listener.
        held.truncate(4);
        loop {
            match a.connect(at(B_V6, 5000)).await {
                Ok(_stream) => break,
                Err(ConnectError::Refused { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn accept_fails_once_the_stack_stops() {
    let (device, b) = UserspaceDevice::new(config([B_V4, B_V6])).unwrap();
    let mut listener = b.listen(7).await.unwrap();
    drop(device);
    let stopped = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .unwrap();
    assert_eq!(stopped.err(), Some(ListenError::StackStopped));
}

// ---------------------------------------------------------------------------------------
// HTTP

#[tokio::test]
async fn http_get_root_returns_the_page() {
    let page = "<!doctype html><p>agent ✓</p>";
    let answer = bounded(http(page, b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")).await;
    assert_eq!(
        answer,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        )
    );
}

#[tokio::test]
async fn http_other_path_is_404() {
    let answer = bounded(http(
        "page",
        b"GET /missing HTTP/1.1\r\nHost: agent\r\n\r\n",
    ))
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    assert!(!answer.contains("page"));
}

#[tokio::test]
async fn http_garbage_is_400() {
    let answer = bounded(http("page", b"\x00\x01 hello there\r\n\r\n")).await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn http_head_larger_than_8_kib_is_431() {
    let mut request = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    request.resize(services::MAX_HEAD + 100, b'a');
    let answer = bounded(http("page", &request)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
}

// ---------------------------------------------------------------------------------------
// Ping: echo requests written into B's device, the replies read back out of it.

const ECHO_ID: u16 = 0x1234;
const ECHO_SEQ: u16 = 7;
const ECHO_DATA: &[u8] = b"codervpn ping payload 0123456789";

/// Sends `request` into the device and reads the first packet it answers with.
async fn ping(request: &[u8]) -> Vec<u8> {
    let (device, _b) = UserspaceDevice::new(config([B_V4, B_V6])).unwrap();
    device.try_send(request).unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(LIMIT, device.recv(&mut buf))
        .await
        .expect("no reply")
        .unwrap();
    buf.truncate(n);
    buf
}

/// The Internet checksum (RFC 1071) of the concatenated slices.
fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP(v6) echo message of `kind`, checksum field zero.
fn echo_message(kind: u8) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&ECHO_ID.to_be_bytes());
    m.extend_from_slice(&ECHO_SEQ.to_be_bytes());
    m.extend_from_slice(ECHO_DATA);
    m
}

/// The address of `net` as bytes, as it stands in an IP header.
fn octets(net: &str) -> Vec<u8> {
    match at(net, 0).ip() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The ICMPv6 checksum's pseudo-header (RFC 8200 §8.1).
fn v6_pseudo(src: &[u8], dst: &[u8], len: usize) -> Vec<u8> {
    let mut p = [src, dst].concat();
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 58]);
    p
}

#[tokio::test]
async fn icmpv6_echo_request_to_our_address_is_answered_byte_for_byte() {
    let (src, dst) = (octets(A_V6), octets(B_V6));
    let mut icmp = echo_message(128);
    let sum = checksum(&[&v6_pseudo(&src, &dst, icmp.len()), &icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut request = vec![0x60, 0, 0, 0];
    request.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    request.extend_from_slice(&[58, 64]);
    request.extend_from_slice(&[src.as_slice(), &dst].concat());
    request.extend_from_slice(&icmp);

    let reply = ping(&request).await;

    assert_eq!(reply[0] >> 4, 6, "IPv6");
    assert_eq!(reply[6], 58, "next header ICMPv6");
    assert_eq!(&reply[8..24], &dst[..], "from the pinged address");
    assert_eq!(&reply[24..40], &src[..], "to the pinger");
    let icmp = &reply[40..];
    assert_eq!(
        usize::from(u16::from_be_bytes([reply[4], reply[5]])),
        icmp.len()
    );
    assert_eq!(&icmp[..2], &[129, 0], "echo reply, code 0");
    assert_eq!(
        &icmp[4..],
        &echo_message(129)[4..],
        "same id, sequence and data"
    );
    assert_eq!(
        checksum(&[&v6_pseudo(&dst, &src, icmp.len()), icmp]),
        0,
        "checksum"
    );
}

#[tokio::test]
async fn icmpv4_echo_request_to_our_address_is_answered_byte_for_byte() {
    let (src, dst) = (octets(A_V4), octets(B_V4));
    let mut icmp = echo_message(8);
    let sum = checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut request = vec![0x45, 0];
    request.extend_from_slice(&total.to_be_bytes());
    request.extend_from_slice(&[0, 1, 0, 0, 64, 1, 0, 0]);
    request.extend_from_slice(&[src.as_slice(), &dst].concat());
    let sum = checksum(&[&request]);
    request[10..12].copy_from_slice(&sum.to_be_bytes());
    request.extend_from_slice(&icmp);

    let reply = ping(&request).await;

    assert_eq!(reply[0], 0x45, "IPv4, no options");
    assert_eq!(checksum(&[&reply[..20]]), 0, "header checksum");
    assert_eq!(reply[9], 1, "protocol ICMP");
    assert_eq!(&reply[12..16], &dst[..], "from the pinged address");
    assert_eq!(&reply[16..20], &src[..], "to the pinger");
    let icmp = &reply[20..];
    assert_eq!(&icmp[..2], &[0, 0], "echo reply, code 0");
    assert_eq!(
        &icmp[4..],
        &echo_message(0)[4..],
        "same id, sequence and data"
    );
    assert_eq!(checksum(&[icmp]), 0, "checksum");
}
