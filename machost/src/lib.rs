//! The macOS host backend for `codervpn up` without Coder Desktop (issue #15): what the
//! Linux backend does with netlink and resolv.conf, done the macOS way.
//!
//! - [`resolver`]: split DNS through `/etc/resolver/<suffix>` files — workspace names go to
//!   the in-tunnel resolver, everything else to the system's. Portable file handling, tested
//!   on Linux against a temporary directory.
//! - [`commands`]: the `ifconfig(8)` and `route(8)` invocations that give a utun its
//!   addresses, MTU and routes, and take the routes away again; built and checked here,
//!   run only on macOS. (The issue asks for the routing socket; the commands are what
//!   `wg-quick` does on macOS, and were quicker to get right without a Mac to test on.)
//! - `utun` (macOS only): a utun device from a `PF_SYSTEM` control socket.
//!
//! State: **compiles for `aarch64-apple-darwin` (`.ci/apple-check`); never run on a Mac**.
//! Nothing in `codervpn up` calls it yet: `nebridge` does not build for macOS.

pub mod commands;
pub mod resolver;
#[cfg(target_os = "macos")]
pub mod utun;
