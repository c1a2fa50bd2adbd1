//! What crossed each path, for metrics and `codervpn status --json` (issue #19): WireGuard
//! datagrams and bytes sent and received directly over UDP and through DERP, and the
//! handshake messages among them (by their message type, the first byte).

/// Packets and bytes one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    pub packets: u64,
    pub bytes: u64,
}

impl Flow {
    fn add(&mut self, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
    }
}

/// WireGuard handshake messages (initiation = type 1, response = type 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handshakes {
    pub initiations_sent: u64,
    pub initiations_received: u64,
    pub responses_sent: u64,
    pub responses_received: u64,
}

/// WireGuard traffic by path. Disco and STUN are not counted here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathTraffic {
    pub udp_tx: Flow,
    pub udp_rx: Flow,
    pub derp_tx: Flow,
    pub derp_rx: Flow,
    pub handshakes: Handshakes,
}

/// Which path a datagram took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Udp,
    Derp,
}

const INITIATION: u8 = 1;
const RESPONSE: u8 = 2;

impl PathTraffic {
    /// A WireGuard datagram handed to `way`.
    pub fn sent(&mut self, way: Way, datagram: &[u8]) {
        match way {
            Way::Udp => self.udp_tx.add(datagram.len()),
            Way::Derp => self.derp_tx.add(datagram.len()),
        }
        match datagram.first() {
            Some(&INITIATION) => self.handshakes.initiations_sent += 1,
            Some(&RESPONSE) => self.handshakes.responses_sent += 1,
            _ => {}
        }
    }

    /// A datagram that arrived over `way` and was handed to WireGuard.
    pub fn received(&mut self, way: Way, datagram: &[u8]) {
        match way {
            Way::Udp => self.udp_rx.add(datagram.len()),
            Way::Derp => self.derp_rx.add(datagram.len()),
        }
        match datagram.first() {
            Some(&INITIATION) => self.handshakes.initiations_received += 1,
            Some(&RESPONSE) => self.handshakes.responses_received += 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_path_and_handshake_type() {
        let mut t = PathTraffic::default();
        t.sent(Way::Udp, &[1; 148]);
        t.sent(Way::Derp, &[4; 32]);
        t.received(Way::Derp, &[2; 92]);
        t.received(Way::Udp, &[4; 80]);
        t.received(Way::Udp, &[]);
        assert_eq!(
            t.udp_tx,
            Flow {
                packets: 1,
                bytes: 148
            }
        );
        assert_eq!(
            t.derp_tx,
            Flow {
                packets: 1,
                bytes: 32
            }
        );
        assert_eq!(
            t.derp_rx,
            Flow {
                packets: 1,
                bytes: 92
            }
        );
        assert_eq!(
            t.udp_rx,
            Flow {
                packets: 2,
                bytes: 80
            }
        );
        assert_eq!(
            t.handshakes,
            Handshakes {
                initiations_sent: 1,
                initiations_received: 0,
                responses_sent: 0,
                responses_received: 1,
            }
        );
    }
}
