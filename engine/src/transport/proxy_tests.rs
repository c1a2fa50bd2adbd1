use super::*;
use std::collections::HashMap;

use tokio::net::TcpListener;

fn env(vars: &[(&str, &str)]) -> Proxies {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Proxies::from_lookup(|k| map.get(k).cloned())
}

fn via(p: &Proxies, scheme: &str, host: &str, port: u16) -> Option<String> {
    p.select(scheme, host, port).unwrap().map(|p| p.shown)
}

#[test]
fn https_and_wss_use_https_proxy_http_and_ws_use_http_proxy() {
    let p = env(&[
        ("HTTPS_PROXY", "http://secure:3128"),
        ("http_proxy", "plain:8080"),
    ]);
    assert_eq!(
        via(&p, "https", "coder.example.com", 443).as_deref(),
        Some("http://secure:3128")
    );
    assert_eq!(
        via(&p, "wss", "coder.example.com", 443).as_deref(),
        Some("http://secure:3128")
    );
    assert_eq!(
        via(&p, "http", "coder.example.com", 80).as_deref(),
        Some("http://plain:8080")
    );
    assert_eq!(
        via(&p, "ws", "10.0.0.5", 80).as_deref(),
        Some("http://plain:8080")
    );
    assert_eq!(via(&env(&[]), "https", "coder.example.com", 443), None);
    let upper_first = env(&[("HTTP_PROXY", "upper:1"), ("http_proxy", "lower:2")]);
    assert_eq!(
        via(&upper_first, "http", "h", 80).as_deref(),
        Some("http://upper:1")
    );
}

#[test]
fn localhost_and_loopback_are_never_proxied() {
    let p = env(&[("HTTPS_PROXY", "proxy:3128"), ("HTTP_PROXY", "proxy:3128")]);
    for host in [
        "localhost",
        "LOCALHOST",
        "127.0.0.1",
        "127.9.9.9",
        "::1",
        "[::1]",
    ] {
        assert_eq!(via(&p, "http", host, 80), None, "{host}");
    }
}

#[test]
fn no_proxy_matches_ips_cidrs_domains_subdomains_and_ports_as_go_does() {
    let p = env(&[
        ("HTTPS_PROXY", "proxy:3128"),
        (
            "NO_PROXY",
            "10.1.2.3, 192.168.0.0/16,internal.corp  .sub.only,*.star.corp,port.corp:8443,[fd00::1]",
        ),
    ]);
    let direct = |host: &str, port: u16| via(&p, "https", host, port).is_none();
    assert!(direct("10.1.2.3", 443));
    assert!(!direct("10.1.2.4", 443));
    assert!(direct("192.168.44.1", 443));
    assert!(direct("internal.corp", 443), "the domain itself");
    assert!(direct("coder.internal.corp", 443), "its subdomains");
    assert!(
        direct("Coder.Internal.Corp.", 443),
        "case and a trailing dot"
    );
    assert!(
        !direct("notinternal.corp", 443),
        "a suffix that is not a label"
    );
    assert!(!direct("sub.only", 443), "a leading dot: subdomains only");
    assert!(direct("a.sub.only", 443));
    assert!(!direct("star.corp", 443), "*. is subdomains only too");
    assert!(direct("a.star.corp", 443));
    assert!(direct("port.corp", 8443));
    assert!(!direct("port.corp", 443), "another port is proxied");
    assert!(direct("fd00::1", 443));
    assert!(
        via(
            &env(&[("HTTPS_PROXY", "p:1"), ("no_proxy", "*")]),
            "https",
            "x",
            1
        )
        .is_none()
    );
}

#[test]
fn proxy_values_parse_with_or_without_scheme_and_unsupported_ones_are_refused() {
    let p = parse_proxy("proxy.corp:3128").unwrap();
    assert_eq!(p.addr, ("proxy.corp".to_string(), 3128));
    assert_eq!(p.authorization, None);
    assert_eq!(parse_proxy("http://proxy.corp").unwrap().addr.1, 80);
    assert_eq!(
        parse_proxy("http://[fd00::2]:3128").unwrap().addr.0,
        "fd00::2"
    );
    // user:pass → Basic, percent-decoded; the password is not shown.
    let p = parse_proxy("http://al%40ice:s%3Acret@proxy:3128").unwrap();
    let expected = base64::engine::general_purpose::STANDARD.encode("al@ice:s:cret");
    assert_eq!(p.authorization, Some(format!("Basic {expected}")));
    assert!(!p.shown.contains("cret"), "{}", p.shown);
    for bad in [
        "https://proxy:443",
        "socks5://proxy:1080",
        "http://",
        "http://:80",
    ] {
        let e = parse_proxy(bad).unwrap_err();
        assert!(e.contains(bad), "{bad}: {e}");
    }
    let e = env(&[("HTTPS_PROXY", "socks5://p:1080")])
        .select("https", "coder.example.com", 443)
        .unwrap_err();
    assert!(e.contains("only http:// proxies"), "{e}");
}

#[test]
fn connect_request_names_the_target_and_carries_credentials() {
    let p = parse_proxy("http://u:p@proxy:3128").unwrap();
    let req = String::from_utf8(connect_request(&p, "fd00::9", 8080)).unwrap();
    assert_eq!(
        req,
        "CONNECT [fd00::9]:8080 HTTP/1.1\r\nHost: [fd00::9]:8080\r\nProxy-Authorization: Basic dTpw\r\n\r\n"
    );
    let plain = parse_proxy("proxy:3128").unwrap();
    let req = String::from_utf8(connect_request(&plain, "coder.example.com", 443)).unwrap();
    assert_eq!(
        req,
        "CONNECT coder.example.com:443 HTTP/1.1\r\nHost: coder.example.com:443\r\n\r\n"
    );
}

#[test]
fn connect_responses_parse_established_refused_partial_and_garbage() {
    assert_eq!(
        parse_connect_response(b"HTTP/1.1 200 Connection established\r\n\r\nxy"),
        Ok(ConnectResponse::Established { extra: 2 })
    );
    assert_eq!(
        parse_connect_response(b"HTTP/1.0 200 OK\r\nProxy-Agent: x\r\n"),
        Ok(ConnectResponse::Partial)
    );
    assert_eq!(
        parse_connect_response(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"),
        Ok(ConnectResponse::Refused(
            "407 Proxy Authentication Required".into()
        ))
    );
    assert!(parse_connect_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    let endless = [
        b"HTTP/1.1 200 OK\r\n".as_slice(),
        &[b'a'; MAX_CONNECT_RESPONSE],
    ]
    .concat();
    let e = parse_connect_response(&endless).unwrap_err();
    assert!(e.contains("no end of headers"), "{e}");
}

/// A one-shot proxy on loopback: reads the CONNECT request, answers `answer`, then echoes
/// (an empty `answer`: closes instead).
async fn fake_proxy(answer: &'static [u8]) -> (u16, tokio::task::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        while !req.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.unwrap() == 0 {
                break;
            }
            req.push(b[0]);
        }
        if answer.is_empty() {
            return String::from_utf8(req).unwrap();
        }
        s.write_all(answer).await.unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        String::from_utf8(req).unwrap()
    });
    (port, task)
}

#[tokio::test]
async fn connect_goes_through_the_proxy_and_the_tunnel_carries_bytes() {
    let (port, proxy) = fake_proxy(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
    let value = format!("http://127.0.0.1:{port}");
    let p = env(&[("HTTP_PROXY", &value)]);
    let mut tcp = connect_with(&p, "http", "coder.internal", 8080)
        .await
        .unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tcp.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    drop(tcp);
    let req = proxy.await.unwrap();
    assert!(
        req.starts_with("CONNECT coder.internal:8080 HTTP/1.1\r\n"),
        "{req}"
    );
}

/// The error of a `wss` connection to `coder.internal:443` through the proxy on `port`.
async fn error_through(port: u16) -> String {
    let value = format!("127.0.0.1:{port}");
    connect_with(
        &env(&[("HTTPS_PROXY", &value)]),
        "wss",
        "coder.internal",
        443,
    )
    .await
    .unwrap_err()
    .to_string()
}

#[tokio::test]
async fn a_refusing_closing_or_absent_proxy_is_an_error_that_names_it() {
    let (port, _proxy) = fake_proxy(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
    let msg = error_through(port).await;
    assert!(
        msg.contains(&format!("proxy http://127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(
        msg.contains("refused CONNECT coder.internal:443: 403 Forbidden"),
        "{msg}"
    );

    // Reads the request, then closes without a word.
    let (port, _proxy) = fake_proxy(b"").await;
    let msg = error_through(port).await;
    assert!(
        msg.contains("closed the connection before answering CONNECT"),
        "{msg}"
    );

    // Nobody listens.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let msg = error_through(port).await;
    assert!(
        msg.contains(&format!("connecting to proxy http://127.0.0.1:{port}")),
        "{msg}"
    );
}
