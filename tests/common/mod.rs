//! What the integration tests share: the harness (private servers, a local cluster, fake
//! servers) and one local cluster per test binary.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::OnceLock;

pub use harness::*;

/// One local 3 + 3 cluster per test binary, started on first use and stopped when the binary
/// exits (the harness' watchdogs see to it).
pub fn shared_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}
