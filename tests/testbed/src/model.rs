//! The deployment the testbed serves: one user, their workspaces and agents.

use std::fmt;

use codervpn_dns::{AgentInfo, agent_fqdns, coder_addr};
use serde::Serialize;

/// A UUID as 16 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A random version-4 UUID.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Self(b)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Uuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `Workspace.Status` numbers (shared by vpn.proto and tailnet.proto).
pub mod status {
    pub const RUNNING: i32 = 3;
    pub const STOPPED: i32 = 5;
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Workspace {
    pub id: Uuid,
    pub name: String,
    pub status: i32,
    pub agents: Vec<Agent>,
}

/// Everything the deployment knows. Immutable: changes publish a new snapshot.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub user_id: Uuid,
    pub username: String,
    pub token: String,
    /// `hostname_suffix` as the server reports it; `None` = unset (clients use `coder`).
    pub hostname_suffix: Option<String>,
    pub workspaces: Vec<Workspace>,
}

/// What `codervpn testbed serve` prints about each agent.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AgentSummary {
    pub name: String,
    pub workspace: String,
    pub fqdn: Vec<String>,
    pub ip: String,
}

impl Deployment {
    /// `workspaces` workspaces named `dev1`, `dev2`, … with `agents_per_workspace` agents
    /// each (`main`, `agent2`, …), all running, owned by `username`.
    pub fn generate(username: &str, workspaces: usize, agents_per_workspace: usize) -> Self {
        let workspaces = (1..=workspaces)
            .map(|w| Workspace {
                id: Uuid::random(),
                name: format!("dev{w}"),
                status: status::RUNNING,
                agents: (1..=agents_per_workspace.max(1))
                    .map(|a| Agent {
                        id: Uuid::random(),
                        name: if a == 1 {
                            "main".to_owned()
                        } else {
                            format!("agent{a}")
                        },
                    })
                    .collect(),
            })
            .collect();
        let mut token = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut token);
        Self {
            user_id: Uuid::random(),
            username: username.to_owned(),
            token: format!("testbed-{}", hex::encode(token)),
            hostname_suffix: None,
            workspaces,
        }
    }

    /// The DNS suffix clients use.
    pub fn suffix(&self) -> &str {
        match self.hostname_suffix.as_deref() {
            Some(s) if !s.is_empty() => s,
            _ => "coder",
        }
    }

    /// Each agent's names (as a PeerUpdate lists them) and Coder-prefix address.
    pub fn agent_summaries(&self) -> Vec<AgentSummary> {
        let mut out = Vec::new();
        for ws in &self.workspaces {
            for agent in &ws.agents {
                let info = AgentInfo {
                    id: agent.id.0,
                    name: agent.name.clone(),
                    workspace: ws.name.clone(),
                    owner: self.username.clone(),
                };
                out.push(AgentSummary {
                    name: agent.name.clone(),
                    workspace: ws.name.clone(),
                    fqdn: agent_fqdns(&info, ws.agents.len(), self.suffix()).unwrap_or_default(),
                    ip: coder_addr(agent.id.0).to_string(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_print_hyphenated() {
        let u = Uuid::random();
        let s = u.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn single_agent_workspaces_get_the_short_name() {
        let d = Deployment::generate("testy", 2, 1);
        let a = &d.agent_summaries()[0];
        assert_eq!(
            a.fqdn,
            [
                "dev1.coder.",
                "main.dev1.me.coder.",
                "main.dev1.testy.coder."
            ]
        );
        assert!(a.ip.starts_with("fd60:627a:a42b:"));
    }
}
