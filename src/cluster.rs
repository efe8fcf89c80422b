//! What the crate needs to know about a Redis Cluster: which nodes serve slots (from
//! `CLUSTER SLOTS`), and whether a server runs in cluster mode (from `INFO`, as Redis and
//! Valkey each spell it). The loader, `doctor` and the CLI all decide "cluster or not" here.

use redis::Value;

use crate::script::reply;
use crate::{Error, Result};

/// One slot range's nodes, as `CLUSTER SLOTS` lists them: the primary first, then replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub(crate) primary: (String, u16),
    pub(crate) replicas: Vec<(String, u16)>,
}

/// Parses `CLUSTER SLOTS`: `[[start, end, [host, port, id…], replicas…]…]`.
pub(crate) fn slot_ranges(slots: &Value) -> Result<Vec<SlotRange>> {
    let bad = || Error::unexpected("CLUSTER SLOTS", format!("{slots:?}"));
    let node = |v: &Value| -> Option<(String, u16)> {
        let Value::Array(n) = v else { return None };
        let host = n.first().and_then(reply::text)?;
        let port = u16::try_from(n.get(1).and_then(reply::int)?).ok()?;
        Some((host, port))
    };
    let Value::Array(ranges) = slots else { return Err(bad()) };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(parts) = range else { return Err(bad()) };
            let primary = parts.get(2).and_then(node).ok_or_else(bad)?;
            let replicas = parts.iter().skip(3).map(|r| node(r).ok_or_else(bad)).collect::<Result<_>>()?;
            Ok(SlotRange { primary, replicas })
        })
        .collect()
}

/// The distinct primaries, sorted.
pub(crate) fn primaries(ranges: &[SlotRange]) -> Vec<(String, u16)> {
    let mut out: Vec<_> = ranges.iter().map(|r| r.primary.clone()).collect();
    out.sort();
    out.dedup();
    out
}

/// Every node (primaries and replicas), sorted.
pub(crate) fn nodes(ranges: &[SlotRange]) -> Vec<(String, u16)> {
    let mut out: Vec<_> =
        ranges.iter().flat_map(|r| std::iter::once(r.primary.clone()).chain(r.replicas.clone())).collect();
    out.sort();
    out.dedup();
    out
}

/// Whether `INFO server` (or the full INFO) describes a cluster node: Redis says
/// `redis_mode:cluster`, Valkey `server_mode:cluster`. `INFO cluster`'s `cluster_enabled:1` is
/// accepted too.
///
/// ```
/// assert!(redis_primitives::cluster::is_cluster("redis_mode:cluster\r\n"));
/// assert!(redis_primitives::cluster::is_cluster("server_mode:cluster\r\n")); // Valkey
/// ```
pub fn is_cluster(info: &str) -> bool {
    info.lines()
        .map(str::trim)
        .any(|l| l == "redis_mode:cluster" || l == "server_mode:cluster" || l == "cluster_enabled:1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.into()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn parses_slots_and_refuses_garbage() {
        let v = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(10), node("b", 2), node("c", 3)]),
            Value::Array(vec![Value::Int(11), Value::Int(20), node("a", 1)]),
        ]);
        let ranges = slot_ranges(&v).unwrap();
        assert_eq!(primaries(&ranges), vec![("a".into(), 1), ("b".into(), 2)]);
        assert_eq!(nodes(&ranges).len(), 3);
        assert!(slot_ranges(&Value::Int(1)).is_err());
        assert!(slot_ranges(&Value::Array(vec![Value::Array(vec![node("a", 99999)])])).is_err());
    }

    #[test]
    fn cluster_mode_in_redis_and_valkey_words() {
        assert!(is_cluster("# Server\r\nredis_mode:cluster\r\n"));
        assert!(is_cluster("server_mode:cluster\n"));
        assert!(!is_cluster("redis_mode:standalone\nserver_mode:standalone\n"));
    }
}
