#![allow(clippy::unwrap_used)]

use super::*;
use crate::net::derp::NodePrivateKey;

fn drain(rx: &mut mpsc::Receiver<ToConn>, q: &ConnQueue) -> usize {
    let bytes = q.bytes();
    let mut n = 0;
    while let Ok(m) = rx.try_recv() {
        if let ToConn::Packet { data, .. } = m {
            bytes.taken(data.len());
        }
        n += 1;
    }
    n
}

#[test]
fn the_queue_is_bounded_in_bytes_and_in_packets() {
    let (tx, mut rx) = mpsc::channel(512);
    let q = ConnQueue::new(tx);
    let src = NodePrivateKey::generate().public_key();
    let big = Bytes::from(vec![0u8; 64 * 1024]);
    let accepted = (0..100)
        .filter(|_| q.try_send_packet(src, big.clone()).is_ok())
        .count();
    assert_eq!(accepted, PER_CLIENT_QUEUE_BYTES / big.len());
    assert_eq!(
        q.try_send_packet(src, big.clone()),
        Err("queue full (bytes)")
    );
    assert_eq!(q.queued_bytes(), PER_CLIENT_QUEUE_BYTES);
    // Taking packets off the queue makes room again.
    assert_eq!(drain(&mut rx, &q), accepted);
    assert_eq!(q.queued_bytes(), 0);
    // WireGuard-sized packets stop at the packet bound first, and a refused one counts for
    // nothing.
    let small = Bytes::from(vec![0u8; 1280]);
    let accepted = (0..600)
        .filter(|_| q.try_send_packet(src, small.clone()).is_ok())
        .count();
    assert_eq!(accepted, 512);
    assert_eq!(q.try_send_packet(src, small.clone()), Err("queue full"));
    assert_eq!(q.queued_bytes(), 512 * 1280);
    drop(rx);
    assert_eq!(q.try_send_packet(src, small), Err("gone"));
}
