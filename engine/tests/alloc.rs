//! The hot path does not allocate: once a session is up, encapsulating and decapsulating
//! packets performs zero heap allocations, and neither do joining packets into GSO frames
//! for a TUN write and cutting such frames back (counted by a global allocator, on the test's own
//! thread only: the harness's other threads allocate when they like, which made this test
//! fail about one run in 40 with "4 allocations").

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use boringtun::x25519::{PublicKey, StaticSecret};
use codervpn_engine::net::path::Via;
use codervpn_engine::net::wg::{Emit, PeerConfig, PeerSet};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the thread whose allocations count (const-initialized, no destructor: safe to
    /// read from inside the allocator).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn ipv4(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![
        0x45,
        0,
        (len >> 8) as u8,
        len as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.resize(len, 0xab);
    p
}

#[test]
fn steady_state_encapsulate_and_decapsulate_do_not_allocate() {
    let (ka, kb) = ([1u8; 32], [2u8; 32]);
    let pubk = |k: [u8; 32]| PublicKey::from(&StaticSecret::from(k)).to_bytes();
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
        "192.0.2.1:1".parse().unwrap(),
        "192.0.2.2:2".parse().unwrap(),
    );
    let mut a = PeerSet::new(ka);
    let mut b = PeerSet::new(kb);
    let peer = |k, ip: &str, ep| PeerConfig {
        public_key: pubk(k),
        preshared_key: None,
        allowed_ips: vec![ip.parse().unwrap()],
        endpoint: ep,
        persistent_keepalive: None,
    };
    a.upsert_peer(peer(kb, "10.0.0.2/32", Some(b_addr)));
    b.upsert_peer(peer(ka, "10.0.0.1/32", Some(a_addr)));
    let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 1420);
    let mut buf_a = vec![0u8; 2048];
    let mut buf_b = vec![0u8; 2048];
    let mut wire = vec![0u8; 2048];
    let mut run = |rounds: usize| {
        let mut delivered = 0;
        for _ in 0..rounds {
            let mut len = 0;
            a.encapsulate(&packet, &mut buf_a, &mut |e| {
                if let Emit::Network { data, .. } = e {
                    wire[..data.len()].copy_from_slice(data);
                    len = data.len();
                }
            });
            // Handshake messages flow back and forth until the session is up.
            let mut back = Vec::new();
            b.decapsulate(
                Via::Udp(a_addr),
                &wire[..len],
                &mut buf_b,
                &mut |e| match e {
                    Emit::Network { data, .. } => back.push(data.to_vec()),
                    Emit::Tunnel(_) => delivered += 1,
                },
            );
            for d in back {
                a.decapsulate(Via::Udp(b_addr), &d, &mut buf_a, &mut |_| {});
            }
        }
        delivered
    };
    assert!(run(10) > 0, "session established");
    COUNTING.with(|c| c.set(true));
    let before = ALLOCS.load(Ordering::SeqCst);
    let delivered = run(10_000);
    let allocs = ALLOCS.load(Ordering::SeqCst) - before;
    COUNTING.with(|c| c.set(false));
    assert_eq!(delivered, 10_000);
    assert_eq!(allocs, 0, "{allocs} allocations in 10 000 packets");
}

/// One UDP datagram of a flow, valid checksums, payload `n`.
fn udp_datagram(n: u8) -> Vec<u8> {
    use codervpn_engine::device::checksum::{PROTO_UDP, fold, pseudo_header, sum16};
    let mut p = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 20 + 8 + 1200);
    p[4] = n; // IPv4 id
    let c = !fold(sum16(&p[..20], 0));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..24].copy_from_slice(&[0x11, 0x5c, 0xea, 0x60]);
    p[24..26].copy_from_slice(&(8u16 + 1200).to_be_bytes());
    p[26..28].copy_from_slice(&[0, 0]);
    p[28] = n;
    let c = !fold(sum16(&p[20..], pseudo_header(&p, true, PROTO_UDP, 1208)));
    p[26..28].copy_from_slice(&c.to_be_bytes());
    p
}

#[test]
fn joining_into_gso_frames_and_cutting_them_back_do_not_allocate() {
    use codervpn_engine::device::coalesce::Coalescer;
    use codervpn_engine::device::offload::{VNET_HDR_LEN, VnetHdr, segment};
    let datagrams: Vec<Vec<u8>> = (0..16).map(udp_datagram).collect();
    let mut c = Coalescer::new();
    let mut frame = vec![0u8; 70_000];
    let mut scratch = vec![0u8; 65_536];
    let mut run = |rounds: usize| {
        let (mut frames, mut cut) = (0usize, 0usize);
        for _ in 0..rounds {
            let mut len = 0;
            let mut keep = |f: &[u8]| {
                frame[..f.len()].copy_from_slice(f);
                len = f.len();
                frames += 1;
            };
            for d in &datagrams {
                c.push(d, &mut keep);
            }
            c.flush(&mut keep);
            let hdr = VnetHdr::parse(&frame[..len]).unwrap();
            cut += segment(&hdr, &mut frame[VNET_HDR_LEN..len], &mut scratch, |_| {}).unwrap();
        }
        (frames, cut)
    };
    assert_eq!(
        run(10),
        (10, 160),
        "16 datagrams join into one frame and cut back into 16"
    );
    COUNTING.with(|c| c.set(true));
    let before = ALLOCS.load(Ordering::SeqCst);
    let (frames, cut) = run(10_000);
    let allocs = ALLOCS.load(Ordering::SeqCst) - before;
    COUNTING.with(|c| c.set(false));
    assert_eq!((frames, cut), (10_000, 160_000));
    assert_eq!(allocs, 0, "{allocs} allocations in 160 000 datagrams");
}
