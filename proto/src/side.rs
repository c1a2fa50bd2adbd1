//! Which messages each role sends and receives.

use crate::header::Role;
use crate::vpn::{ManagerMessage, Rpc, TunnelMessage, manager_message, tunnel_message};

/// A role's outgoing and incoming top-level message types.
pub trait Side: Send + Sync + 'static {
    const ROLE: Role;
    type Out: prost::Message + Default + Send + 'static;
    type In: prost::Message + Default + Send + 'static;
    const OUT_NAME: &'static str;
    const IN_NAME: &'static str;

    fn out_rpc(msg: &mut Self::Out) -> &mut Option<Rpc>;
    fn in_rpc(msg: &Self::In) -> Option<&Rpc>;
    /// A short name of the message's payload, for logs (never its contents).
    fn in_kind(msg: &Self::In) -> &'static str;
    fn out_kind(msg: &Self::Out) -> &'static str;
}

/// The tunnel's end: sends `TunnelMessage`, receives `ManagerMessage`.
#[derive(Debug)]
pub struct TunnelSide;

/// The manager's end: sends `ManagerMessage`, receives `TunnelMessage`.
#[derive(Debug)]
pub struct ManagerSide;

impl Side for TunnelSide {
    const ROLE: Role = Role::Tunnel;
    type Out = TunnelMessage;
    type In = ManagerMessage;
    const OUT_NAME: &'static str = "TunnelMessage";
    const IN_NAME: &'static str = "ManagerMessage";

    fn out_rpc(msg: &mut TunnelMessage) -> &mut Option<Rpc> {
        &mut msg.rpc
    }
    fn in_rpc(msg: &ManagerMessage) -> Option<&Rpc> {
        msg.rpc.as_ref()
    }
    fn in_kind(msg: &ManagerMessage) -> &'static str {
        manager_kind(msg)
    }
    fn out_kind(msg: &TunnelMessage) -> &'static str {
        tunnel_kind(msg)
    }
}

impl Side for ManagerSide {
    const ROLE: Role = Role::Manager;
    type Out = ManagerMessage;
    type In = TunnelMessage;
    const OUT_NAME: &'static str = "ManagerMessage";
    const IN_NAME: &'static str = "TunnelMessage";

    fn out_rpc(msg: &mut ManagerMessage) -> &mut Option<Rpc> {
        &mut msg.rpc
    }
    fn in_rpc(msg: &TunnelMessage) -> Option<&Rpc> {
        msg.rpc.as_ref()
    }
    fn in_kind(msg: &TunnelMessage) -> &'static str {
        tunnel_kind(msg)
    }
    fn out_kind(msg: &ManagerMessage) -> &'static str {
        manager_kind(msg)
    }
}

pub fn manager_kind(msg: &ManagerMessage) -> &'static str {
    use manager_message::Msg;
    match &msg.msg {
        None => "empty",
        Some(Msg::GetPeerUpdate(_)) => "get_peer_update",
        Some(Msg::NetworkSettings(_)) => "network_settings",
        Some(Msg::Start(_)) => "start",
        Some(Msg::Stop(_)) => "stop",
        Some(Msg::Wake(_)) => "wake",
    }
}

pub fn tunnel_kind(msg: &TunnelMessage) -> &'static str {
    use tunnel_message::Msg;
    match &msg.msg {
        None => "empty",
        Some(Msg::Log(_)) => "log",
        Some(Msg::PeerUpdate(_)) => "peer_update",
        Some(Msg::NetworkSettings(_)) => "network_settings",
        Some(Msg::Start(_)) => "start",
        Some(Msg::Stop(_)) => "stop",
        Some(Msg::Wake(_)) => "wake",
    }
}
