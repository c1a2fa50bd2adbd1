//! Packet devices: where IP packets enter and leave the tunnel.
//!
//! - [`FdDevice`]: a file descriptor carrying one IP packet per read/write — a Linux TUN
//!   (`IFF_TUN | IFF_NO_PI`, created here or handed over by a manager), or a macOS utun,
//!   whose packets carry a 4-byte address-family prefix ([`Framing::Utun`]).
//! - [`UserspaceDevice`]: no descriptor at all — a smoltcp TCP/IP stack in this process,
//!   reached through a SOCKS5 server and TCP port forwards (no root, no TUN).

pub mod checksum;
pub mod coalesce;
mod fd;
#[cfg(target_os = "linux")]
pub mod linux_tun;
pub mod offload;
pub mod userspace;

use std::future::Future;
use std::io;

pub use fd::{FdDevice, Framing, dup};
pub use userspace::UserspaceDevice;

/// One packet per call, in both directions.
pub trait Device: Send + Sync {
    /// Waits for the next packet and reads it into `buf`.
    fn recv<'a>(&'a self, buf: &'a mut [u8])
    -> impl Future<Output = io::Result<usize>> + Send + 'a;
    /// Reads a packet if one is ready; `WouldBlock` otherwise.
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes a packet if the device can take it now; `WouldBlock` otherwise. A device may
    /// hold packets back to coalesce them until [`Device::flush`].
    fn try_send(&self, packet: &[u8]) -> io::Result<()>;
    /// Writes anything `try_send` held back. Called after each batch.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}
