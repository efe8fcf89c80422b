//! What the integration tests share: the harness (private servers, a local cluster, fake
//! servers), one local cluster per test binary, the "every primitive" smoke, and a macro that
//! runs one test body on a standalone server and on the cluster.
#![allow(dead_code, unused_macros, unused_imports)] // each test binary uses a different part

pub mod smoke;

use std::sync::OnceLock;

pub use harness::*;

/// One local 3 + 3 cluster per test binary, started on first use and stopped when the binary
/// exits (the harness' watchdogs see to it).
pub fn shared_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

/// Defines `mod <name>` with two tests running one body: `standalone` (a private server,
/// multiplexed connection) and `cluster` (the shared cluster, cluster connection). The body is
/// an async block over `$con`, a connection of a type that is `ConnectionLike + Clone + Send +
/// Sync + 'static`.
///
/// ```ignore
/// standalone_and_cluster!(peek_writes_nothing, |con| {
///     let l = limiter();
///     l.peek(&mut con, "a", 1).await.unwrap();
/// });
/// ```
macro_rules! standalone_and_cluster {
    ($name:ident, |$con:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body<C>($con: C)
            where
                C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
            {
                #[allow(unused_mut)]
                let mut $con = $con;
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                let server = $crate::common::Server::start();
                body(server.client().get_multiplexed_async_connection().await.unwrap()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                let client = $crate::common::shared_cluster().client();
                body(client.get_async_connection().await.unwrap()).await;
            }
        }
    };
}
pub(crate) use standalone_and_cluster;
