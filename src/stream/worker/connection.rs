//! The worker's connections and what it does about errors: where connections come from
//! ([`Connector`]), a connection that is replaced when it stops answering ([`Link`]), the one
//! error policy ([`fault`]) and the backoff between retries.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisError, RedisFuture, Value};

use crate::flow::{self, Flow};
use crate::{Error, Result};

/// Where a worker gets its connections. The worker opens its own: one for the blocking read
/// (its deadline is the block time plus the command timeout) and one for acks, claims and
/// scripts; it replaces either when it stops answering.
///
/// For a cluster, build the [`ClusterClient`] without `response_timeout` (the worker sets it
/// per connection); if you set one, also set `overall_response_timeout(None)` or a value above
/// the block time, since redis-rs keeps the builder's overall timeout.
#[derive(Clone)]
pub struct Connector(Source);

#[derive(Clone)]
enum Source {
    // Boxed: both clients are large (more so with TLS), and a Connector is moved around.
    Standalone(Box<redis::Client>),
    Cluster(Box<ClusterClient>),
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Standalone(c) => f.debug_tuple("Connector::Standalone").field(c).finish(),
            Source::Cluster(_) => f.write_str("Connector::Cluster(..)"),
        }
    }
}

impl From<redis::Client> for Connector {
    fn from(c: redis::Client) -> Self {
        Connector(Source::Standalone(Box::new(c)))
    }
}

impl From<ClusterClient> for Connector {
    fn from(c: ClusterClient) -> Self {
        Connector(Source::Cluster(Box::new(c)))
    }
}

impl Connector {
    /// A standalone server (or a proxy).
    pub fn standalone(client: redis::Client) -> Self {
        client.into()
    }

    /// A Redis Cluster.
    pub fn cluster(client: ClusterClient) -> Self {
        client.into()
    }

    /// Whether connections may move between nodes (a `CLIENT ID` names a connection on one
    /// node only, so `CLIENT UNBLOCK` is for standalone servers).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.0, Source::Cluster(_))
    }

    /// A connection whose own response timeout is `response`, opened within `within` (redis-rs'
    /// reconnect policy alone can take seconds when nothing listens).
    async fn connect(&self, response: Duration, within: Duration) -> Result<Conn> {
        let open = async {
            Ok::<_, RedisError>(match &self.0 {
                Source::Standalone(client) => {
                    let config = ConnectionManagerConfig::new()
                        .set_response_timeout(Some(response))
                        .set_connection_timeout(Some(within))
                        .set_max_delay(Duration::from_secs(2));
                    Conn::Single(client.get_connection_manager_with_config(config).await?)
                }
                Source::Cluster(client) => {
                    let config =
                        ClusterConfig::new().set_response_timeout(response).set_connection_timeout(within);
                    Conn::Cluster(client.get_async_connection_with_config(config).await?)
                }
            })
        };
        match tokio::time::timeout(within, open).await {
            Ok(conn) => Ok(conn?),
            Err(_) => Err(unanswered(flow::timeout("connect"))),
        }
    }
}

/// A worker's connection: a reconnecting standalone connection, or a cluster connection.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A connection that is dropped when it fails or stops answering and opened again on next use:
/// a stuck node (a failover in progress, a dead primary) costs one command timeout, never the
/// worker. Clones share the connection until one of them replaces its own.
#[derive(Clone)]
pub(super) struct Link {
    connector: Connector,
    pub(super) conn: Option<Conn>,
    /// The connection's own (redis-rs) response timeout: above `timeout`, so ours decides.
    response: Duration,
    /// How long a command (or connecting) may take.
    pub(super) timeout: Duration,
}

impl Link {
    /// A link whose commands take at most `timeout`, connected now; `response` is the
    /// connection's own response timeout (above the longest command it will carry).
    pub(super) async fn open(connector: &Connector, response: Duration, timeout: Duration) -> Result<Link> {
        let mut link = Link { connector: connector.clone(), conn: None, response, timeout };
        link.ensure().await?;
        Ok(link)
    }

    /// Connects if the last connection was dropped.
    pub(super) async fn ensure(&mut self) -> Result<&mut Conn> {
        if self.conn.is_none() {
            self.conn = Some(self.connector.connect(self.response, self.timeout).await?);
        }
        self.conn.as_mut().ok_or_else(|| Error::unexpected("stream worker", "no connection"))
    }

    /// Runs `flow`, connecting first if needed, all within the command timeout; a connection
    /// error or a cut drops the connection, so the next use opens a fresh one.
    pub(super) async fn run<F: Flow>(&mut self, flow: F) -> Result<F::Out> {
        let timeout = self.timeout;
        let out = tokio::time::timeout(timeout, async {
            let conn = self.ensure().await?;
            flow::run_async(flow, conn).await
        })
        .await
        .unwrap_or_else(|_| Err(flow::timeout("stream worker command")));
        out.map_err(|e| self.failed(unanswered(e)))
    }

    /// Drops the connection after a connection error (a cut included); returns the error.
    pub(super) fn failed(&mut self, e: Error) -> Error {
        if e.is_connection() {
            self.conn = None;
        }
        e
    }

    /// The flow of one command, bounded by the command timeout.
    pub(super) fn command(&self, name: &'static str, cmd: Cmd) -> flow::OnceCommand {
        flow::OnceCommand::new(name, cmd, self.timeout)
    }

    /// The flow of one pipeline, bounded by the command timeout.
    pub(super) fn pipeline(&self, name: &'static str, pipe: redis::Pipeline) -> flow::OnceCommand {
        flow::OnceCommand::pipeline(name, pipe, self.timeout)
    }
}

/// Inside the worker, a command cut at its deadline is a connection that did not answer in
/// time: the same [`Error::Connection`] redis-rs' own response timeout gives (which a cluster
/// connection does not always enforce), so [`Error::is_transient`] retries it where a resend is
/// safe, and the connection is replaced.
pub(super) fn unanswered(e: Error) -> Error {
    match e {
        Error::Timeout(what) => {
            Error::Connection(std::io::Error::new(std::io::ErrorKind::TimedOut, what).into())
        }
        other => other,
    }
}

/// What a worker loop does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// [`Error::is_transient`]: wait and try again (every command the worker retries is safe
    /// to resend: reads and claims leave what they delivered pending, acks and dead-lettering
    /// are idempotent).
    Retry,
    /// The group is gone (`NOGROUP`, e.g. after a restart without persistence), or a blocked
    /// read was ended because the server changed role or the key vanished (`UNBLOCKED`): the
    /// reader creates the group again (harmless if it exists) and goes on.
    LostGroup,
    /// Anything else (wrong key type, no permission, a reply we cannot trust): stop.
    Stop,
}

/// The worker's error policy: [`Error::is_transient`], with the one special case of a lost group.
pub(super) fn fault(e: &Error) -> Fault {
    match e {
        Error::Redis(r) if matches!(r.code(), Some("NOGROUP" | "UNBLOCKED")) => Fault::LostGroup,
        e if e.is_transient() => Fault::Retry,
        _ => Fault::Stop,
    }
}

/// Exponential backoff with jitter: 50 ms doubling to 2 s.
#[derive(Debug, Default)]
pub(super) struct Backoff(u32);

impl Backoff {
    pub(super) fn next(&mut self) -> Duration {
        let base = 50u64 << self.0.min(5);
        self.0 = self.0.saturating_add(1);
        let ms = base.min(2000);
        Duration::from_millis(ms / 2 + rand::random_range(0..=ms / 2))
    }

    pub(super) fn reset(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::default();
        assert!(b.next() <= Duration::from_millis(50));
        for _ in 0..100 {
            assert!(b.next() <= Duration::from_secs(2));
        }
    }

    #[test]
    fn one_policy() {
        let server = |reply: &str| -> Error {
            let v = redis::parse_redis_value(format!("-{reply}\r\n").as_bytes()).unwrap();
            v.extract_error().unwrap_err().into()
        };
        let cut = unanswered(flow::timeout("XACK"));
        assert!(cut.is_connection() && cut.is_transient());
        for (e, want) in [
            (cut, Fault::Retry),
            (server("NOGROUP No such key or consumer group"), Fault::LostGroup),
            (server("UNBLOCKED force unblock from blocking operation"), Fault::LostGroup),
            (server("LOADING Redis is loading the dataset in memory"), Fault::Retry),
            (server("WRONGTYPE Operation against a key holding the wrong kind of value"), Fault::Stop),
            (server("NOPERM this user has no permissions"), Fault::Stop),
            (Error::invalid("x", "y"), Fault::Stop),
            (Error::unexpected("XACK", "garbage"), Fault::Stop),
        ] {
            assert_eq!(fault(&e), want, "{e:?}");
        }
    }
}
