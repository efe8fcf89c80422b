//! The crate's one error type.

use redis::RedisError;

/// Everything a call into this crate can fail with.
///
/// The variants separate what a caller handles differently: a lost connection (retry or fail over),
/// another error from Redis (configuration, permissions, memory), a script refusing its input,
/// a key holding the wrong type, a reply that does not match the script's contract, and bad
/// arguments caught before anything was sent.
///
/// ```
/// use redis_primitives::Error;
///
/// let err = Error::InvalidArgument { name: "limit", reason: "must be at least 1".into() };
/// assert_eq!(err.to_string(), "invalid argument `limit`: must be at least 1");
/// assert!(!err.is_connection());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection failed, dropped, refused or timed out. A timed-out call may have run on the
    /// server: do not blindly replay one that consumes something.
    #[error("connection error: {0}")]
    Connection(#[source] RedisError),

    /// Redis answered with an error that is not the script's own (for example NOPERM, OOM,
    /// CROSSSLOT, BUSY).
    #[error("redis error: {0}")]
    Redis(#[source] RedisError),

    /// The script refused its input with one of the error replies its contract lists
    /// (`@errors`), such as `BADARG`.
    #[error("script {script} replied {code}: {message}")]
    Script {
        /// The script's `@name`.
        script: String,
        /// The first word of the error reply, e.g. `BADARG`.
        code: String,
        /// The rest of the error reply.
        message: String,
    },

    /// A key the script touched holds a value of another type (Redis' WRONGTYPE).
    #[error("script {script} found a key of the wrong type: {message}")]
    WrongType {
        /// The script's `@name`.
        script: String,
        /// Redis' message.
        message: String,
    },

    /// The reply does not have the shape the script's contract (or the command) promises, or is
    /// not valid protocol at all: the server is not a Redis we can trust with this call (a proxy
    /// or a fake answering garbage, a version that replies differently).
    #[error("unexpected reply from {command}: {detail}")]
    UnexpectedReply {
        /// The script's `@name`, or the command.
        command: String,
        /// What was expected and what arrived.
        detail: String,
    },

    /// An argument was refused before anything was sent.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// A request costs more than a limit can ever hold (its limit or burst): it would be refused
    /// forever, so it is an error rather than a "retry later".
    #[error("a cost of {cost} can never fit a limit of capacity {capacity}")]
    InsufficientCapacity {
        /// The request's cost.
        cost: u64,
        /// The smallest capacity among the limits checked.
        capacity: u64,
    },

    /// The caller's own computation (e.g. a cache fill) failed; nothing was cached.
    #[error("compute failed: {0}")]
    Compute(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The call did not finish within the time the caller allowed (a timeout argument, or the
    /// primitive's default deadline): waiting for a lease, lock or permit, or a server that did
    /// not answer in time. A call cut short may have run on the server.
    #[error("timed out: {0}")]
    Timeout(String),

    /// An acquire (a lock, a semaphore permit) failed with `error` after an attempt whose
    /// outcome is unknown: the attempt may have taken the lock on the server. Before returning,
    /// the acquire sent a compare-and-delete release of its token (safe: it removes only what
    /// this token holds), so nothing stays held by a token no guard owns. `released`:
    /// `Some(true)` the attempt had taken it and the release gave it back; `Some(false)` the
    /// server confirmed the token held nothing; `None` the release got no answer either, and
    /// the lease's TTL ends it (on one connection the release runs after the attempt, so it
    /// still frees what the attempt took once the server answers again).
    #[error("{error}; {}", abandoned(*.released))]
    Abandoned {
        /// Why the acquire failed.
        #[source]
        error: Box<Error>,
        /// Whether the server confirmed the release of the acquire's token (see above).
        released: Option<bool>,
    },

    /// A script built with [`Script::from_source`](crate::script::Script::from_source) is
    /// malformed, or no embedded script has that name.
    #[error("script bundle: {0}")]
    Bundle(String),
}

/// Server error codes that say "not now" rather than "never": the same call may succeed once
/// the cluster settles, the dataset is loaded, a failover completes or a running script ends.
const TRANSIENT_CODES: &[&str] =
    &["TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN", "READONLY", "BUSY", "MOVED", "ASK"];

impl Error {
    /// True for a lost, refused or timed-out connection.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Abandoned { error, .. } => error.is_connection(),
            _ => matches!(self, Error::Connection(_)),
        }
    }

    /// True when the same call may succeed if tried again later: a connection error, or a server
    /// error that is about the moment, not the call (`TRYAGAIN`, `CLUSTERDOWN`, `LOADING`,
    /// `MASTERDOWN`, `READONLY` right after a failover, `BUSY` while a script runs, a redirect).
    /// Every retry loop of this crate (lock and semaphore acquire, the cache's wait for a fill,
    /// the stream worker) retries exactly these errors, and nothing else.
    ///
    /// ```
    /// use redis_primitives::Error;
    /// assert!(!Error::InvalidArgument { name: "ttl", reason: "zero".into() }.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connection(_) => true,
            Error::Redis(e) => e.code().is_some_and(|c| TRANSIENT_CODES.contains(&c)),
            Error::Abandoned { error, .. } => error.is_transient(),
            _ => false,
        }
    }

    /// True when the server refused by ACL: the command itself (NOPERM), or a command a script
    /// called (Redis 7: "The user executing the script can't run this command"; Valkey:
    /// "ACL failure in script: User … has no permissions to run the '…' command").
    pub fn is_permission_denied(&self) -> bool {
        match self {
            Error::Redis(e) => {
                e.code() == Some("NOPERM")
                    || e.detail().is_some_and(|d| {
                        d.contains("can't run this command") || d.contains("has no permissions to run")
                    })
            }
            _ => false,
        }
    }

    /// True when the call did not finish within its timeout or deadline ([`Error::Timeout`],
    /// also as the cause of an [`Error::Abandoned`] acquire).
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Abandoned { error, .. } => error.is_timeout(),
            _ => matches!(self, Error::Timeout(_)),
        }
    }

    pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { name, reason: reason.into() }
    }

    pub(crate) fn unexpected(command: &str, detail: impl Into<String>) -> Self {
        Error::UnexpectedReply { command: command.to_owned(), detail: detail.into() }
    }
}

fn abandoned(released: Option<bool>) -> &'static str {
    match released {
        Some(true) => "the acquire had taken it and released it again",
        Some(false) => "the acquire's token was confirmed to hold nothing",
        None => "the release of the acquire's token got no answer: its TTL ends it",
    }
}

/// Sorted by what the error is: a broken connection, a reply that is not what was asked for
/// (unparseable, or of another type), or the server's own error reply.
impl From<RedisError> for Error {
    fn from(err: RedisError) -> Self {
        use redis::ErrorKind;
        match err.kind() {
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
                Error::UnexpectedReply { command: "redis".into(), detail: err.to_string() }
            }
            _ if err.is_io_error()
                || err.is_connection_dropped()
                || err.is_connection_refusal()
                || err.is_timeout()
                || err.kind() == ErrorKind::ClusterConnectionNotFound =>
            {
                Error::Connection(err)
            }
            _ => Error::Redis(err),
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
