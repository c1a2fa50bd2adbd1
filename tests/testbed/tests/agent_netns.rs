//! `TestbedConfig::agent_netns`: the agent fleet on its own thread in a network namespace.
//! A namespace of its own, reached over veths through a NAT, is `tests/netns/nat.sh`; here
//! the mechanics: a clear error when the namespace cannot be entered, and a fleet that
//! comes up and stops with the testbed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use codervpn_testbed::{NetnsError, Testbed, TestbedConfig, TestbedError};

#[tokio::test]
async fn missing_agent_namespace_fails_start_with_the_path_in_the_error() {
    let path = PathBuf::from("/run/netns/codervpn-testbed-no-such-namespace");
    let Err(e) = Testbed::start(TestbedConfig {
        agent_netns: Some(path.clone()),
        ..Default::default()
    })
    .await
    else {
        panic!("started with agents in a namespace that does not exist");
    };
    assert!(
        matches!(e, TestbedError::AgentNetns(NetnsError::Open { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

/// Entering a namespace needs CAP_SYS_ADMIN; without it this checks the error instead.
#[tokio::test]
async fn agents_in_a_namespace_register_and_are_gone_once_the_testbed_is_dropped() {
    let started = Testbed::start(TestbedConfig {
        workspaces: 2,
        // The testbed's own namespace under another name: everything but the isolation.
        agent_netns: Some(PathBuf::from("/proc/self/ns/net")),
        ..Default::default()
    })
    .await;
    let tb = match started {
        Ok(tb) => tb,
        Err(TestbedError::AgentNetns(e @ NetnsError::Enter { .. })) => {
            assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(tb.agents_ready(Duration::from_secs(10)).await);
    let coordinator = tb.coordinator().clone();
    assert_eq!(coordinator.agents(), 2);
    drop(tb);
    assert_eq!(coordinator.agents(), 0, "the fleet unregistered its agents");
}
