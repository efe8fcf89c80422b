//! Operational checks to run before trusting a Redis deployment with coordination data:
//! server version against the scripts, persistence, eviction policy, memory, loaded scripts and
//! cluster state, on every node.
//!
//! ```no_run
//! let report = redis_primitives::doctor::diagnose("redis://127.0.0.1:6379")?;
//! print!("{}", report.to_text());
//! std::process::exit(if report.failed() { 1 } else { 0 });
//! # Ok::<(), redis_primitives::Error>(())
//! ```

use std::collections::BTreeMap;

use crate::script::{self, contract::parse_version};
use crate::{Result, cluster};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "lowercase"))]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but a risk worth knowing about.
    Warn,
    /// Something the primitives rely on is broken.
    Fail,
}

/// One check on one node.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Check {
    /// `host:port`.
    pub node: String,
    /// Short name, e.g. `persistence`.
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found, and what to do about it.
    pub detail: String,
}

/// Every check, in order.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Report {
    /// The URL diagnosed.
    pub url: String,
    /// Whether it is a cluster.
    pub cluster: bool,
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when any check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// Human-readable lines.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "redis-primitives doctor: {}{}\n",
            self.url,
            if self.cluster { " (cluster)" } else { "" }
        );
        for c in &self.checks {
            let tag = match c.status {
                Status::Ok => " ok ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            out.push_str(&format!("[{tag}] {:21} {:16} {}\n", c.node, c.name, c.detail));
        }
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "{} ok, {} warnings, {} failed\n",
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        ));
        out
    }

    /// The report as JSON (with the `serde` feature).
    #[cfg(feature = "serde")]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Connects to `url` (and, for a cluster, every node it lists) and runs every check.
pub fn diagnose(url: &str) -> Result<Report> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection_with_timeout(std::time::Duration::from_secs(5))?;
    let info = Info::read(&mut con, "server")?;
    let cluster = info.get("redis_mode") == Some("cluster") || info.get("server_mode") == Some("cluster");
    let mut checks = Vec::new();
    if cluster {
        let state: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con)?;
        let ok = state.lines().any(|l| l.trim() == "cluster_state:ok");
        checks.push(Check {
            node: "cluster".into(),
            name: "cluster state",
            status: if ok { Status::Ok } else { Status::Fail },
            detail: if ok {
                "cluster_state:ok".into()
            } else {
                "cluster_state is not ok: some slots are not served; calls on them fail".into()
            },
        });
        let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con)?;
        for (host, port) in cluster::nodes(&cluster::slot_ranges(&slots)?) {
            let node = format!("{host}:{port}");
            let mut info = client.get_connection_info().clone();
            info = info.set_addr(redis::ConnectionAddr::Tcp(host, port));
            match redis::Client::open(info)
                .and_then(|c| c.get_connection_with_timeout(std::time::Duration::from_secs(5)))
            {
                Ok(mut c) => checks.extend(node_checks(&node, &mut c)?),
                Err(e) => checks.push(Check {
                    node,
                    name: "reachable",
                    status: Status::Fail,
                    detail: format!("cannot connect: {e}"),
                }),
            }
        }
    } else {
        let node = client.get_connection_info().addr().to_string();
        checks.extend(node_checks(&node, &mut con)?);
    }
    Ok(Report { url: url.to_owned(), cluster, checks })
}

/// `INFO` as a map.
struct Info(BTreeMap<String, String>);

impl Info {
    fn read(con: &mut redis::Connection, section: &str) -> Result<Info> {
        let text: String = redis::cmd("INFO").arg(section).query(con)?;
        Ok(Info(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
        ))
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    fn num(&self, k: &str) -> Option<f64> {
        self.get(k)?.parse().ok()
    }
}

fn config(con: &mut redis::Connection, name: &str) -> Option<String> {
    let pairs: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query(con).ok()?;
    pairs.get(1).cloned()
}

fn node_checks(node: &str, con: &mut redis::Connection) -> Result<Vec<Check>> {
    let info = Info::read(con, "all")?;
    let check = |name, status, detail: String| Check { node: node.to_owned(), name, status, detail };
    let mut checks = Vec::new();

    // Server version against every script's @min-server.
    let bundle = script::bundle();
    let version = info.get("redis_version").unwrap_or("unknown").to_owned();
    let too_new: Vec<String> = bundle
        .iter()
        .filter(|s| match (parse_version(&version), parse_version(&s.contract().min_server)) {
            (Some(have), Some(need)) => have < need,
            _ => true,
        })
        .map(|s| format!("{} (needs {})", s.name(), s.contract().min_server))
        .collect();
    checks.push(if too_new.is_empty() {
        check("server version", Status::Ok, format!("{version}: every script's @min-server is met"))
    } else {
        check("server version", Status::Fail, format!("{version} cannot run: {}", too_new.join(", ")))
    });

    // Persistence: lock fencing counters and cache versions must survive a restart.
    let rdb = config(con, "save").is_some_and(|s| !s.trim().is_empty());
    let aof = info.get("aof_enabled") == Some("1");
    checks.push(match (rdb, aof) {
        (_, true) => check("persistence", Status::Ok, "AOF on: fencing counters survive a restart".into()),
        (true, false) => check(
            "persistence",
            Status::Warn,
            "RDB snapshots only: a restart can lose fencing-counter increments since the last \
             snapshot, so tokens may repeat; enable appendonly yes (appendfsync everysec)"
                .into(),
        ),
        (false, false) => check(
            "persistence",
            Status::Warn,
            "no persistence: a restart resets lock fencing counters (tokens start again at 1, and \
             a resource that saw higher tokens refuses new holders) and forgets rate limits; \
             enable appendonly yes"
                .into(),
        ),
    });

    // Eviction policy: allkeys-* may evict lock keys and fencing counters.
    let maxmemory = info.num("maxmemory").unwrap_or(0.0);
    let policy = info.get("maxmemory_policy").unwrap_or("noeviction").to_owned();
    checks.push(if policy.starts_with("allkeys") && maxmemory > 0.0 {
        check(
            "eviction policy",
            Status::Warn,
            format!(
                "{policy} can evict lock keys, fencing counters and limiter state under memory \
                 pressure (a lock silently freed, a limit reset); use noeviction or volatile-*, \
                 or keep caches on a separate instance"
            ),
        )
    } else {
        let why = if maxmemory == 0.0 {
            "no maxmemory: nothing is evicted"
        } else {
            "keys without TTL are never evicted"
        };
        check("eviction policy", Status::Ok, format!("{policy} ({why})"))
    });

    // Fragmentation: only meaningful once the dataset is not tiny.
    let used = info.num("used_memory").unwrap_or(0.0);
    let frag = info.num("mem_fragmentation_ratio").unwrap_or(1.0);
    checks.push(if used > 64.0 * 1024.0 * 1024.0 && frag > 1.5 {
        check(
            "fragmentation",
            Status::Warn,
            format!("mem_fragmentation_ratio {frag:.2}: consider activedefrag yes"),
        )
    } else if used > 64.0 * 1024.0 * 1024.0 && frag < 1.0 {
        check(
            "fragmentation",
            Status::Warn,
            format!("mem_fragmentation_ratio {frag:.2}: memory may be swapped"),
        )
    } else {
        check(
            "fragmentation",
            Status::Ok,
            format!("mem_fragmentation_ratio {frag:.2}, used {:.1} MiB", used / 1048576.0),
        )
    });

    let evicted = info.num("evicted_keys").unwrap_or(0.0) as u64;
    checks.push(if evicted > 0 {
        check(
            "evicted keys",
            Status::Warn,
            format!("{evicted} keys evicted since start: coordination state may have been among them"),
        )
    } else {
        check("evicted keys", Status::Ok, "none evicted".into())
    });

    // Loaded scripts: informational, every call loads what is missing by itself.
    let shas: Vec<&str> = bundle.iter().map(|s| s.sha1()).collect();
    let exists: Vec<i64> = redis::cmd("SCRIPT").arg("EXISTS").arg(&shas).query(con)?;
    let missing: Vec<&str> =
        bundle.iter().zip(&exists).filter(|(_, e)| **e == 0).map(|(s, _)| s.name()).collect();
    checks.push(check(
        "scripts loaded",
        Status::Ok,
        if missing.is_empty() {
            format!("all {} bundle scripts", bundle.len())
        } else {
            format!(
                "{} of {} (missing ones load on first use, or run `scripts load`): missing {}",
                bundle.len() - missing.len(),
                bundle.len(),
                missing.join(", ")
            )
        },
    ));
    Ok(checks)
}
