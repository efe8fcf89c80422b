//! Cluster faults beyond a clean failover: killing the primary that serves a key.

use std::time::{Duration, Instant};

use crate::{Cluster, Server};

impl Cluster {
    /// Kills the primary serving `key` (SIGKILL, as a crash: no failover handshake, unreplicated
    /// writes lost) and waits until the cluster has promoted its replica: every live node reports
    /// `cluster_state:ok` and a live node serves the key's slot. The killed server leaves
    /// `nodes` and is returned (dropping it removes its folder), with the new primary's port.
    pub fn kill_primary(&mut self, key: &str) -> (Server, u16) {
        let (old, _) = self.owners(key);
        let i = self.nodes.iter().position(|n| n.port() == old).expect("the primary is one of the nodes");
        let mut dead = self.nodes.remove(i);
        dead.kill();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self.nodes.iter().all(|n| n.info_cluster().contains("cluster_state:ok"));
            let owner = self.owners(key).0;
            if ok && owner != old {
                return (dead, owner);
            }
            assert!(Instant::now() < deadline, "no replica took over from :{old} in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Cluster {
    /// Promotes the replica of `key`'s primary with `CLUSTER FAILOVER` (the primary hands over,
    /// nothing acknowledged is lost) and waits until every node agrees; returns the new
    /// primary's port. Unlike [`failover`](Cluster::failover), it asks again when a failover
    /// does not take: Redis 7.0 lets a replica that won an election a few seconds earlier "win"
    /// the next one at once with its stale votes and an old epoch, which the cluster undoes
    /// ("Configuration change detected"), as when failovers follow each other quickly.
    pub fn failover_again(&self, key: &str) -> u16 {
        let (old, replicas) = self.owners(key);
        let promoted = replicas[0];
        for _attempt in 0..5 {
            let _: String = self.node(promoted).cmd(&["CLUSTER", "FAILOVER"]);
            let deadline = Instant::now() + Duration::from_secs(8);
            while Instant::now() < deadline {
                if self.owners(key).0 == promoted && self.all_see_master(promoted) {
                    self.wait_healthy();
                    return promoted;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("failover of :{old} to :{promoted} did not take after 5 attempts");
    }

    /// Every node lists `port` as a primary in CLUSTER NODES.
    fn all_see_master(&self, port: u16) -> bool {
        self.nodes.iter().all(|n| {
            n.cmd::<String>(&["CLUSTER", "NODES"])
                .lines()
                .any(|l| l.contains(&format!(":{port}@")) && l.contains("master"))
        })
    }
}
