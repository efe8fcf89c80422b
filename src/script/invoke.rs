//! Invoking scripts: EVALSHA (EVALSHA_RO for read-only calls), with NOSCRIPT recovery.
//!
//! The logic lives in small state machines ("plans") that say which command or pipeline to send
//! next and what a reply means. The blocking and the async driver only move bytes, so both
//! paths share every decision: one piece of code builds a call and parses its reply.
//!
//! Recovery: a NOSCRIPT reply means the script did not run, so re-sending is safe. The plan
//! re-sends as one pipeline `SCRIPT LOAD <source>` + `EVALSHA …`. A pipeline travels to one
//! node, and on a cluster redis-rs routes it by the EVALSHA's key, so the script is loaded on
//! exactly the node that answered NOSCRIPT (a fresh replica after a failover, a restarted or
//! flushed server), in the same round trip as the retry.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisResult, ServerErrorKind, ToRedisArgs, Value};

use super::{Mode, Reply, Script};
use crate::telemetry::{CallSpan, NoScript};
use crate::{Error, Result, telemetry};

/// EVALSHA_RO support, learned from the servers' answers. When a server answers EVALSHA_RO with
/// "unknown command" (Redis < 7.0), the call is re-sent as EVALSHA at once (nothing ran), and
/// read-only calls use EVALSHA (always correct, only not replica-routable) for the next
/// minute; then EVALSHA_RO is tried again. So one old server never switches EVALSHA_RO
/// off for good. It is not remembered per server: redis-rs does not say which server a
/// connection reaches. In a fleet mixing 6.2 and 7.x, a 7.x server may get plain EVALSHA for at
/// most a minute after a 6.2 server answered, and a 6.2 server costs one extra round trip per
/// minute.
mod evalsha_ro {
    use super::*;

    /// How long an "unknown command" is remembered.
    pub(super) const RO_RETRY: Duration = Duration::from_secs(60);

    fn base() -> Instant {
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    /// Milliseconds after `base()` until which EVALSHA_RO is off; 0: on.
    static OFF_UNTIL: AtomicU64 = AtomicU64::new(0);

    pub(super) fn supported() -> bool {
        let until = OFF_UNTIL.load(Ordering::Relaxed);
        until == 0 || base().elapsed().as_millis() as u64 >= until
    }

    pub(super) fn refused() {
        let until = base().elapsed().saturating_add(RO_RETRY).as_millis() as u64;
        OFF_UNTIL.store(until.max(1), Ordering::Relaxed);
    }
}

/// One call of a script: its keys and arguments, ready to send.
///
/// ```no_run
/// # async fn demo() -> redis_primitives::Result<()> {
/// let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
/// let mut con = client.get_multiplexed_async_connection().await?;
/// let released = redis_primitives::script::get("lock.release")?
///     .invoke()
///     .key("lock:{orders}")
///     .arg("my-token")
///     .query_async(&mut con)
///     .await?;
/// println!("{released:?}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Invocation<'s> {
    script: &'s Script,
    keys: ArgBuf,
    args: ArgBuf,
    read_only: bool,
}

/// Arguments packed in one buffer (an allocation per buffer, not per argument: this sits on
/// every call's path).
#[derive(Debug, Clone, Default)]
struct ArgBuf {
    data: Vec<u8>,
    starts: Vec<usize>,
}

impl ArgBuf {
    /// Room for a typical call, so building it does not reallocate.
    fn with_capacity(count: usize, bytes: usize) -> Self {
        ArgBuf { data: Vec::with_capacity(bytes), starts: Vec::with_capacity(count.max(1)) }
    }
    fn len(&self) -> usize {
        self.starts.len()
    }
    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let ends = self.starts.iter().skip(1).copied().chain(std::iter::once(self.data.len()));
        self.starts.iter().zip(ends).map(|(&s, e)| &self.data[s..e])
    }
}

impl redis::RedisWrite for ArgBuf {
    fn write_arg(&mut self, arg: &[u8]) {
        self.starts.push(self.data.len());
        self.data.extend_from_slice(arg);
    }
    fn writer_for_next_arg(&mut self) -> impl std::io::Write + '_ {
        self.starts.push(self.data.len());
        &mut self.data
    }
}

impl<'s> Invocation<'s> {
    pub(crate) fn new(script: &'s Script) -> Self {
        let c = script.contract();
        Invocation {
            script,
            keys: ArgBuf::with_capacity(c.keys.len(), 48),
            args: ArgBuf::with_capacity(c.args.len(), 64),
            read_only: c.mode == Mode::Read,
        }
    }

    /// Adds a key (`KEYS[i]`).
    pub fn key<T: ToRedisArgs>(mut self, key: T) -> Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds an argument (`ARGV[i]`).
    pub fn arg<T: ToRedisArgs>(mut self, arg: T) -> Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// Sends this call with EVALSHA_RO (where the server has it). Defaults to the script's
    /// `@mode`; a write script may be sent read-only when the caller asks for a path that only
    /// reads (e.g. a rate limit's peek), and Redis enforces that it writes nothing.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The script this call runs.
    pub fn script(&self) -> &'s Script {
        self.script
    }

    /// The first key (what a cluster routes the call by); empty when there is none.
    pub(super) fn first_key(&self) -> &[u8] {
        self.keys.iter().next().unwrap_or_default()
    }

    /// Checks what can be checked without the server: the number of keys against the contract,
    /// and that no key is empty.
    pub fn validate(&self) -> Result<()> {
        let c = self.script.contract();
        let fixed = c.fixed_keys();
        let ok = if c.variadic_keys() { self.keys.len() > fixed } else { self.keys.len() == fixed };
        if !ok {
            let want = if c.variadic_keys() { format!("more than {fixed}") } else { fixed.to_string() };
            return Err(Error::invalid(
                "keys",
                format!("{} takes {want} keys, got {}", c.name, self.keys.len()),
            ));
        }
        if self.keys.iter().any(<[u8]>::is_empty) {
            return Err(Error::invalid("key", "keys must not be empty"));
        }
        Ok(())
    }

    pub(super) fn evalsha(&self, read_only: bool) -> Cmd {
        // Sized up front: the command is built once per call and never grows.
        let count = 3 + self.keys.len() + self.args.len();
        let mut cmd = Cmd::with_capacity(count, 64 + self.keys.data.len() + self.args.data.len());
        cmd.arg(if read_only { "EVALSHA_RO" } else { "EVALSHA" })
            .arg(self.script.sha1())
            .arg(self.keys.len());
        for k in self.keys.iter() {
            cmd.arg(k);
        }
        for a in self.args.iter() {
            cmd.arg(a);
        }
        cmd
    }

    fn wants_read_only(&self) -> bool {
        self.read_only && evalsha_ro::supported()
    }

    /// Runs the call on a blocking connection; the raw reply.
    pub fn query(&self, con: &mut dyn redis::ConnectionLike) -> Result<Value> {
        self.validate()?;
        let span = CallSpan::script(self.script.name(), self.keys.iter().next());
        let mut plan = CallPlan::new(self);
        let out = span.in_scope(|| drive(&mut plan, con));
        span.finish(&out, plan.trips, plan.noscript);
        out
    }

    /// Runs the call on an async connection (multiplexed, connection manager, cluster); the raw
    /// reply.
    pub async fn query_async<C>(&self, con: &mut C) -> Result<Value>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        self.validate()?;
        let span = CallSpan::script(self.script.name(), self.keys.iter().next());
        let mut plan = CallPlan::new(self);
        let out = span.instrument(drive_async(&mut plan, con)).await;
        span.finish(&out, plan.trips, plan.noscript);
        out
    }
}

/// A typed script call: how to build the invocation and how to read the reply. Primitives
/// implement this once; `query` (blocking) and `query_async` run it on any redis-rs connection.
///
/// ```no_run
/// use redis_primitives::script::{Invocation, Reply, ScriptCall};
///
/// struct Release<'a> { key: &'a str, token: &'a str }
///
/// impl ScriptCall for Release<'_> {
///     type Output = bool;
///     fn invocation(&self) -> redis_primitives::Result<Invocation<'static>> {
///         Ok(redis_primitives::script::get("lock.release")?.invoke().key(self.key).arg(self.token))
///     }
///     fn parse(&self, reply: Reply) -> redis_primitives::Result<bool> {
///         Ok(reply.int()? == 1)
///     }
/// }
///
/// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
/// let released = Release { key: "lock:{orders}", token: "t-1" }.query(con)?;
/// # Ok(()) }
/// ```
pub trait ScriptCall {
    /// What the call answers.
    type Output;

    /// Validates the arguments and builds the invocation. Nothing is sent when this fails.
    fn invocation(&self) -> Result<Invocation<'static>>;

    /// Reads the reply.
    fn parse(&self, reply: Reply) -> Result<Self::Output>;

    /// Runs the call on a blocking connection.
    fn query(&self, con: &mut dyn redis::ConnectionLike) -> Result<Self::Output> {
        let inv = self.invocation()?;
        let value = inv.query(con)?;
        self.parse(Reply::new(inv.script().name(), value))
    }

    /// Runs the call on an async connection.
    fn query_async<C>(&self, con: &mut C) -> impl Future<Output = Result<Self::Output>> + Send
    where
        C: redis::aio::ConnectionLike + Send,
        Self: Sync,
    {
        async move {
            let inv = self.invocation()?;
            let value = inv.query_async(con).await?;
            self.parse(Reply::new(inv.script().name(), value))
        }
    }
}

/// A raw invocation is a call too: its output is the reply as it came, so raw calls of any
/// scripts can share a [`Batch`](super::Batch).
impl ScriptCall for Invocation<'static> {
    type Output = Value;
    fn invocation(&self) -> Result<Invocation<'static>> {
        Ok(self.clone())
    }
    fn parse(&self, reply: Reply) -> Result<Value> {
        Ok(reply.into_value())
    }
}

/// What to send next.
pub(super) enum Step {
    Cmd(Cmd),
    Pipe(Pipeline),
}

/// A sans-IO exchange: the first step, then each reply gives either the next step or the end.
pub(super) trait Plan {
    type Out;
    fn first(&mut self) -> Step;
    fn advance(&mut self, reply: RedisResult<Value>) -> ControlFlow<Result<Self::Out>, Step>;
}

pub(super) fn drive<P: Plan>(plan: &mut P, con: &mut dyn redis::ConnectionLike) -> Result<P::Out> {
    let mut step = plan.first();
    loop {
        let reply = match &step {
            Step::Cmd(cmd) => cmd.query::<Value>(con),
            Step::Pipe(pipe) => pipe.query::<Value>(con),
        };
        match plan.advance(reply) {
            ControlFlow::Break(out) => return out,
            ControlFlow::Continue(next) => step = next,
        }
    }
}

pub(super) async fn drive_async<P, C>(plan: &mut P, con: &mut C) -> Result<P::Out>
where
    P: Plan,
    C: redis::aio::ConnectionLike + Send,
{
    let mut step = plan.first();
    loop {
        let reply = match &step {
            Step::Cmd(cmd) => cmd.query_async::<Value>(con).await,
            Step::Pipe(pipe) => pipe.query_async::<Value>(con).await,
        };
        match plan.advance(reply) {
            ControlFlow::Break(out) => return out,
            ControlFlow::Continue(next) => step = next,
        }
    }
}

/// One invocation: EVALSHA; on NOSCRIPT, SCRIPT LOAD + EVALSHA in one pipeline, once.
struct CallPlan<'a, 's> {
    inv: &'a Invocation<'s>,
    read_only: bool,
    recovering: bool,
    /// Round trips so far (telemetry).
    trips: u32,
    /// Whether a NOSCRIPT was met, and how its recovery went (telemetry).
    noscript: NoScript,
}

impl<'a, 's> CallPlan<'a, 's> {
    fn new(inv: &'a Invocation<'s>) -> Self {
        CallPlan {
            inv,
            read_only: inv.wants_read_only(),
            recovering: false,
            trips: 0,
            noscript: NoScript::None,
        }
    }
}

impl Plan for CallPlan<'_, '_> {
    type Out = Value;

    fn first(&mut self) -> Step {
        self.trips = 1;
        Step::Cmd(self.inv.evalsha(self.read_only))
    }

    fn advance(&mut self, reply: RedisResult<Value>) -> ControlFlow<Result<Value>, Step> {
        let script = self.inv.script;
        if self.recovering && self.noscript == NoScript::None {
            let recovered = recovery_ran(&reply);
            self.noscript = if recovered { NoScript::Recovered } else { NoScript::Failed };
            telemetry::noscript(script.name(), recovered);
        }
        let reply = if self.recovering { reply.and_then(|v| recovered_reply(v, 1)) } else { reply };
        match reply {
            Ok(v) => ControlFlow::Break(Ok(v)),
            Err(e) if is_noscript(&e) && !self.recovering => {
                self.trips += 1;
                self.recovering = true;
                let mut pipe = redis::pipe();
                pipe.ignore_errors()
                    .add_command(load_cmd(script))
                    .add_command(self.inv.evalsha(self.read_only));
                ControlFlow::Continue(Step::Pipe(pipe))
            }
            Err(e) if self.read_only && is_unknown_command(&e) => {
                // Nothing ran: the server does not know EVALSHA_RO.
                evalsha_ro::refused();
                self.trips += 1;
                self.read_only = false;
                self.recovering = false;
                ControlFlow::Continue(Step::Cmd(self.inv.evalsha(false)))
            }
            Err(e) => ControlFlow::Break(Err(classify(script, e))),
        }
    }
}

pub(crate) fn load_cmd(script: &Script) -> Cmd {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(script.source());
    cmd
}

/// Whether the retry of a recovery pipeline (`SCRIPT LOAD` + `EVALSHA`) ran: the load succeeded
/// and the EVALSHA did not meet NOSCRIPT again.
pub(super) fn recovery_ran(reply: &RedisResult<Value>) -> bool {
    match reply {
        Ok(Value::Array(items)) => {
            !matches!(items.first(), Some(Value::ServerError(_)))
                && !matches!(items.get(1), Some(Value::ServerError(e)) if e.code() == "NOSCRIPT")
        }
        _ => false,
    }
}

/// The `index`-th reply of a recovery pipeline, with a failed SCRIPT LOAD reported first.
fn recovered_reply(v: Value, index: usize) -> RedisResult<Value> {
    match v {
        Value::Array(items) => {
            let mut items = items.into_iter();
            if let Some(Value::ServerError(e)) = items.next() {
                return Err(e.into());
            }
            items.nth(index - 1).unwrap_or(Value::Nil).extract_error()
        }
        other => Ok(other),
    }
}

pub(super) fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

fn is_unknown_command(e: &RedisError) -> bool {
    e.code() == Some("ERR") && e.detail().is_some_and(|d| d.starts_with("unknown command"))
}

/// Sorts a server error into the crate's error kinds, using the script's contract to recognise
/// its own error replies.
pub(crate) fn classify(script: &Script, err: RedisError) -> Error {
    if let Some(code) = err.code() {
        let detail = err.detail().unwrap_or_default().trim().to_owned();
        if script.contract().gives_error(code) {
            return Error::Script {
                script: script.name().to_owned(),
                code: code.to_owned(),
                message: detail,
            };
        }
        // Redis 7 replies WRONGTYPE; 6.2 wraps it as "ERR Error running script ...: WRONGTYPE ...".
        if code == "WRONGTYPE" || detail.contains("WRONGTYPE") {
            return Error::WrongType { script: script.name().to_owned(), message: detail };
        }
    }
    Error::from(err)
}
