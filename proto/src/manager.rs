//! Typed manager-side requests over a [`Handle<ManagerSide>`], with the version gate for
//! Wake (protocol 1.3).

use crate::connection::{Handle, RpcError};
use crate::side::{ManagerSide, tunnel_kind};
use crate::version::Version;
use crate::vpn::{
    self, ManagerMessage, PeerUpdate, StartResponse, StopResponse, TunnelMessage, WakeResponse,
    manager_message, tunnel_message,
};

/// The first protocol version with `WakeRequest` / `WakeResponse`.
pub const WAKE_VERSION: Version = Version::new(1, 3);

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(
        "the tunnel negotiated protocol {negotiated}, which has no wake (needs {WAKE_VERSION})"
    )]
    WakeUnsupported { negotiated: Version },
    #[error("the tunnel answered {request} with {got}")]
    UnexpectedReply {
        request: &'static str,
        got: &'static str,
    },
}

/// Requests a manager makes of a tunnel.
#[derive(Clone)]
pub struct ManagerClient {
    handle: Handle<ManagerSide>,
}

impl ManagerClient {
    pub fn new(handle: Handle<ManagerSide>) -> Self {
        Self { handle }
    }

    pub fn handle(&self) -> &Handle<ManagerSide> {
        &self.handle
    }

    pub async fn start(&self, req: vpn::StartRequest) -> Result<StartResponse, ManagerError> {
        match self.call("start", manager_message::Msg::Start(req)).await? {
            tunnel_message::Msg::Start(r) => Ok(r),
            other => Err(unexpected("start", other)),
        }
    }

    pub async fn stop(&self) -> Result<StopResponse, ManagerError> {
        match self
            .call("stop", manager_message::Msg::Stop(vpn::StopRequest {}))
            .await?
        {
            tunnel_message::Msg::Stop(r) => Ok(r),
            other => Err(unexpected("stop", other)),
        }
    }

    pub async fn get_peer_update(&self) -> Result<PeerUpdate, ManagerError> {
        let msg = manager_message::Msg::GetPeerUpdate(vpn::GetPeerUpdate {});
        match self.call("get_peer_update", msg).await? {
            tunnel_message::Msg::PeerUpdate(r) => Ok(r),
            other => Err(unexpected("get_peer_update", other)),
        }
    }

    /// Sends Wake, or refuses locally (nothing sent) when the tunnel negotiated < 1.3.
    pub async fn wake(&self) -> Result<WakeResponse, ManagerError> {
        let negotiated = self.handle.negotiated();
        if negotiated < WAKE_VERSION {
            return Err(ManagerError::WakeUnsupported { negotiated });
        }
        match self
            .call("wake", manager_message::Msg::Wake(vpn::WakeRequest {}))
            .await?
        {
            tunnel_message::Msg::Wake(r) => Ok(r),
            other => Err(unexpected("wake", other)),
        }
    }

    async fn call(
        &self,
        request: &'static str,
        msg: manager_message::Msg,
    ) -> Result<tunnel_message::Msg, ManagerError> {
        let reply = self
            .handle
            .request(ManagerMessage {
                rpc: None,
                msg: Some(msg),
            })
            .await?;
        reply.msg.ok_or(ManagerError::UnexpectedReply {
            request,
            got: "an empty reply",
        })
    }
}

fn unexpected(request: &'static str, got: tunnel_message::Msg) -> ManagerError {
    let got = tunnel_kind(&TunnelMessage {
        rpc: None,
        msg: Some(got),
    });
    ManagerError::UnexpectedReply { request, got }
}
