//! Preloading the bundle with SCRIPT LOAD: one pipeline per server, every primary of a cluster.
//!
//! Preloading is an optimisation and a check (permissions, server reachable), not a requirement:
//! every invocation recovers from NOSCRIPT by itself.

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Pipeline, Value};

use super::invoke::load_cmd;
use super::{Bundle, bundle};
use crate::{Error, Result, cluster};

/// The outcome of preloading on one cluster node.
#[derive(Debug)]
pub struct NodeLoad {
    /// `host:port` of the primary.
    pub node: String,
    /// The number of scripts loaded, or why the node failed.
    pub outcome: Result<usize>,
}

fn load_pipeline(bundle: &Bundle) -> Pipeline {
    let mut pipe = redis::pipe();
    for s in bundle.iter() {
        pipe.add_command(load_cmd(s));
    }
    pipe
}

/// Checks that the server hashed each script to the SHA1 we call it by.
fn check_loaded(bundle: &Bundle, shas: Vec<String>) -> Result<usize> {
    if shas.len() != bundle.len() {
        return Err(Error::unexpected(
            "SCRIPT LOAD",
            format!("{} replies for {} scripts", shas.len(), bundle.len()),
        ));
    }
    for (s, got) in bundle.iter().zip(&shas) {
        if got != s.sha1() {
            // Not a bundle problem: the bundle's SHA1s are computed from the embedded bytes. A server
            // that hashes differently is not a Redis we can call by SHA1.
            let detail = format!("hashed {} to {got}, expected {}", s.name(), s.sha1());
            return Err(Error::unexpected("SCRIPT LOAD", detail));
        }
    }
    Ok(shas.len())
}

/// Loads every bundled script on a standalone server (or a replica-less node) in one pipeline,
/// over a blocking connection. Returns the number of scripts loaded.
///
/// ```no_run
/// let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
/// let mut con = client.get_connection().unwrap();
/// let n = redis_primitives::script::preload(&mut con)?;
/// # Ok::<(), redis_primitives::Error>(())
/// ```
pub fn preload(con: &mut dyn redis::ConnectionLike) -> Result<usize> {
    let bundle = bundle();
    let shas: Vec<String> = load_pipeline(bundle).query(con)?;
    check_loaded(bundle, shas)
}

/// [`preload`] over an async connection (multiplexed or connection manager).
///
/// ```no_run
/// # async fn demo() -> redis_primitives::Result<()> {
/// let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
/// let mut con = client.get_connection_manager().await?;
/// redis_primitives::script::preload_async(&mut con).await?;
/// # Ok(()) }
/// ```
pub async fn preload_async<C>(con: &mut C) -> Result<usize>
where
    C: redis::aio::ConnectionLike + Send,
{
    let bundle = bundle();
    let shas: Vec<String> = load_pipeline(bundle).query_async(con).await?;
    check_loaded(bundle, shas)
}

/// Loads every bundled script on every primary of a cluster, reporting per node. A node that
/// fails does not stop the others; the outer error is for not finding the primaries at all.
///
/// ```no_run
/// # async fn demo() -> redis_primitives::Result<()> {
/// let client = redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:7000"]).unwrap();
/// let mut con = client.get_async_connection().await?;
/// for node in redis_primitives::script::preload_cluster(&mut con).await? {
///     println!("{}: {:?}", node.node, node.outcome);
/// }
/// # Ok(()) }
/// ```
pub async fn preload_cluster(con: &mut ClusterConnection) -> Result<Vec<NodeLoad>> {
    let bundle = bundle();
    let slots = con
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let primaries = cluster::primaries(&cluster::slot_ranges(&slots)?);
    let pipe = load_pipeline(bundle);
    let mut reports = Vec::with_capacity(primaries.len());
    for (host, port) in primaries {
        let route = SingleNodeRoutingInfo::ByAddress { host: host.clone(), port };
        let outcome = match con.route_pipeline(pipe.clone(), 0, bundle.len(), route).await {
            Ok(values) => redis::from_redis_value::<Vec<String>>(Value::Array(values))
                .map_err(|e| Error::unexpected("SCRIPT LOAD", e.to_string()))
                .and_then(|shas| check_loaded(bundle, shas)),
            Err(e) => Err(e.into()),
        };
        reports.push(NodeLoad { node: format!("{host}:{port}"), outcome });
    }
    Ok(reports)
}
