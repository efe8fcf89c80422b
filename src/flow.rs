//! Multi-step operations (acquire with backoff, wait for a rate limit, wait for a cache fill,
//! release with one resend) as sans-IO state machines ("flows"), in the style of
//! [`script::invoke`](crate::script): a flow says what to do next (send this call, sleep this
//! long, stop with this answer) and is told what happened; it never touches a socket or a clock
//! other than `Instant::now()`. Two thin drivers move the bytes: [`run_async`] and
//! [`run_blocking`]. So the async method and its `_blocking` twin make the same decisions, by
//! construction, and the `twins!` macro below generates both from one definition.
//!
//! Deadlines: a flow may name the instant by which its current call must be answered
//! ([`Flow::deadline`]). The async driver cuts the call there (the flow then sees
//! [`Error::Timeout`]); the blocking driver cannot interrupt a blocking read, so a blocking call
//! is bounded by its connection's read and write timeouts (see the crate docs), and the driver
//! only checks the deadline between steps.

use std::time::{Duration, Instant};

use redis::Value;

use crate::script::{Invocation, Reply, ScriptCall};
use crate::{Error, Result};

mod owned;

pub(crate) use owned::{Keep, Side, run_async_owned};

/// What a flow asks its driver to do next.
pub(crate) enum Step<T> {
    /// Send this script call; its outcome comes back as [`Event::Reply`].
    Call(Invocation<'static>),
    /// Send this native command (named for error messages: a reset's `DEL`, a stream's `XADD`);
    /// its outcome comes back as [`Event::Reply`].
    Command(&'static str, redis::Cmd),
    /// Send these native commands in one pipeline (one round trip, not a transaction), named
    /// for error messages; the replies come back as one [`Event::Reply`] holding an array with
    /// one item per command (the first error reply fails the whole step).
    Pipeline(&'static str, redis::Pipeline),
    /// Sleep, then [`Event::Woke`].
    Sleep(Duration),
    /// Finished.
    Done(Result<T>),
}

impl<T> Step<T> {
    /// Sends the call `inv` was built into, after noting its script's name in `script` (to read
    /// the reply with); an error building it finishes the flow with that error.
    pub(crate) fn send(inv: Result<Invocation<'static>>, script: &mut &'static str) -> Step<T> {
        match inv {
            Ok(inv) => {
                *script = inv.script().name();
                Step::Call(inv)
            }
            Err(e) => Step::Done(Err(e)),
        }
    }
}

/// What happened since the last step.
pub(crate) enum Event {
    /// The outcome of the call: the raw reply (NOSCRIPT already recovered), or the error,
    /// including [`Error::Timeout`] when the driver cut the call at the flow's deadline.
    Reply(Result<Value>),
    /// The sleep is over.
    Woke,
}

/// A sans-IO multi-step operation.
pub(crate) trait Flow {
    /// The answer.
    type Out;

    /// The first step.
    fn start(&mut self) -> Step<Self::Out>;

    /// The next step, given what happened.
    fn on(&mut self, event: Event) -> Step<Self::Out>;

    /// By when the call about to be sent must be answered; `None`: no bound beyond the
    /// connection's own. Asked before every call, so a flow can give its clean-up (a release
    /// after a timed-out acquire) a grace period past the caller's deadline.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// Called when the async driver is dropped before the flow finished: the step that starts
    /// giving back what the flow may hold (a cancelled acquire releases the token an attempt in
    /// flight may have taken). [`run_async_owned`] runs the flow on from there, to the end, in a
    /// spawned task. `None` (the default): nothing to give back.
    fn cancelled(&mut self) -> Option<Step<Self::Out>> {
        None
    }
}

/// Runs a flow on an async connection (multiplexed, connection manager, cluster, pooled).
pub(crate) async fn run_async<F, C>(mut flow: F, con: &mut C) -> Result<F::Out>
where
    F: Flow,
    C: redis::aio::ConnectionLike + Send,
{
    let step = flow.start();
    drive(&mut flow, step, con).await
}

/// Moves a flow on from `step` until it finishes.
async fn drive<F, C>(flow: &mut F, mut step: Step<F::Out>, con: &mut C) -> Result<F::Out>
where
    F: Flow,
    C: redis::aio::ConnectionLike + Send,
{
    loop {
        step = match step {
            Step::Done(out) => return out,
            Step::Sleep(d) => {
                tokio::time::sleep(d).await;
                flow.on(Event::Woke)
            }
            Step::Call(inv) => {
                let reply = within(flow.deadline(), inv.script().name(), inv.query_async(con)).await;
                flow.on(Event::Reply(reply))
            }
            Step::Command(name, cmd) => {
                let reply = within(flow.deadline(), name, async {
                    cmd.query_async::<Value>(con).await.map_err(Error::from)
                })
                .await;
                flow.on(Event::Reply(reply))
            }
            Step::Pipeline(name, pipe) => {
                let reply = within(flow.deadline(), name, async {
                    pipe.query_async::<Value>(con).await.map_err(Error::from)
                })
                .await;
                flow.on(Event::Reply(reply))
            }
        }
    }
}

/// Runs a flow on a blocking connection. Each call is bounded only by the connection's read and
/// write timeouts; the deadline is checked between steps, and sleeps never run past it.
pub(crate) fn run_blocking<F: Flow>(mut flow: F, con: &mut dyn redis::ConnectionLike) -> Result<F::Out> {
    let mut step = flow.start();
    loop {
        step = match step {
            Step::Done(out) => return out,
            Step::Sleep(d) => {
                std::thread::sleep(d);
                flow.on(Event::Woke)
            }
            Step::Call(inv) => {
                let reply = match flow.deadline() {
                    Some(at) if Instant::now() >= at => Err(timeout(inv.script().name())),
                    _ => inv.query(con),
                };
                flow.on(Event::Reply(reply))
            }
            Step::Command(name, cmd) => {
                let reply = match flow.deadline() {
                    Some(at) if Instant::now() >= at => Err(timeout(name)),
                    _ => cmd.query::<Value>(con).map_err(Error::from),
                };
                flow.on(Event::Reply(reply))
            }
            Step::Pipeline(name, pipe) => {
                let reply = match flow.deadline() {
                    Some(at) if Instant::now() >= at => Err(timeout(name)),
                    _ => pipe.query::<Value>(con).map_err(Error::from),
                };
                flow.on(Event::Reply(reply))
            }
        }
    }
}

/// Awaits `fut`, cut at `deadline` (if any) with [`Error::Timeout`] naming `what`.
pub(crate) async fn within<T>(
    deadline: Option<Instant>,
    what: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match deadline {
        None => fut.await,
        Some(at) => match tokio::time::timeout_at(at.into(), fut).await {
            Ok(out) => out,
            Err(_) => Err(timeout(what)),
        },
    }
}

/// The error of a call cut at its deadline.
pub(crate) fn timeout(what: &str) -> Error {
    Error::Timeout(format!("{what}: no answer within the deadline (the call may have run on the server)"))
}

/// The simplest flow: one typed call, bounded by a deadline. What every single-call method of a
/// primitive runs, so even a one-round-trip call returns within the primitive's deadline when
/// the server is down or silent.
pub(crate) struct Once<K> {
    call: K,
    deadline: Option<Instant>,
    /// The script sent, for the reply's error messages.
    script: &'static str,
}

impl<K: ScriptCall> Once<K> {
    /// `call`, to be answered within `timeout` from now.
    pub(crate) fn new(call: K, timeout: Duration) -> Self {
        Once { call, deadline: Some(crate::rules::deadline(timeout)), script: "" }
    }
}

impl<K: ScriptCall> Flow for Once<K> {
    type Out = K::Output;

    fn start(&mut self) -> Step<K::Output> {
        Step::send(self.call.invocation(), &mut self.script)
    }

    fn on(&mut self, event: Event) -> Step<K::Output> {
        Step::Done(match event {
            Event::Reply(Ok(v)) => self.call.parse(Reply::new(self.script, v)),
            Event::Reply(Err(e)) => Err(e),
            Event::Woke => Err(Error::unexpected("flow", "woke without a sleep")),
        })
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// Defines an async method and its `_blocking` twin from one definition: the same arguments,
/// the same flow, the same docs. The async one takes any async connection (`&mut C` with
/// `C: redis::aio::ConnectionLike + Send`: multiplexed, connection manager, cluster, a pooled
/// connection), the blocking one any `&mut dyn redis::ConnectionLike`.
///
/// ```ignore
/// twins! {
///     /// Checks and consumes: one atomic call.
///     cancel: "Cancelling may leave the request counted (the call may have run).",
///     pub fn check / check_blocking (&self, subject: &str, request: impl Into<Request>) -> Decision
///         = self.check_flow(subject, request.into());
/// }
/// ```
///
/// A method whose answer keeps the connection (a lock guard renews and releases on it) gives
/// two answer types, async then blocking, and names the [`Side`] for its flow. Its async twin
/// takes a handle it can clone (`C: Clone + 'static`), runs the flow with [`run_async_owned`]
/// (so a cancelled call gives back what it took) and builds its answer with [`Keep`]; the
/// blocking answer comes from `Into`:
///
/// ```ignore
/// twins! {
///     /// One attempt.
///     cancel: "Dropping the future releases what its attempt may have taken.",
///     pub fn try_acquire / try_acquire_blocking (&self) -> Acquire<Guard<C>>, Acquire<BlockingGuard>
///         = |side| self.acquiring(side, None)?;
/// }
/// ```
#[allow(unused_macros)]
macro_rules! twins {
    ($(
        $(#[doc = $doc:expr])*
        cancel: $cancel:expr,
        $vis:vis fn $name:ident / $blocking:ident $(<$($lt:lifetime),+>)?
            (&$self:ident $(, $arg:ident : $ty:ty)* $(,)?) -> $out:ty
            = $flow:expr;
    )*) => {$(
        $(#[doc = $doc])*
        ///
        #[doc = concat!("Blocking twin: [`", stringify!($blocking), "`](Self::", stringify!($blocking), ").")]
        ///
        /// # Cancel safety
        ///
        #[doc = $cancel]
        $vis async fn $name<$($($lt,)+)? C>(&$self, con: &mut C $(, $arg: $ty)*) -> $crate::Result<$out>
        where
            C: $crate::redis::aio::ConnectionLike + Send,
        {
            $crate::flow::run_async($flow, con).await
        }

        $(#[doc = $doc])*
        ///
        #[doc = concat!("The blocking twin of [`", stringify!($name), "`](Self::", stringify!($name), "): \
            the same flow, on a blocking connection. Each round trip is bounded by the connection's \
            read and write timeouts (set them: a blocking connection has none by default).")]
        $vis fn $blocking$(<$($lt),+>)?(&$self, con: &mut dyn $crate::redis::ConnectionLike $(, $arg: $ty)*) -> $crate::Result<$out> {
            $crate::flow::run_blocking($flow, con)
        }
    )*};
    // Methods whose answer keeps the connection (a lock guard, a permit): two answer types, the
    // async one first. The async twin needs a handle it can clone (`C: Clone + 'static`), keeps a
    // clone in its answer (`Keep`), and runs the flow with `run_async_owned`, so a cancelled call
    // gives back what it took; the blocking answer holds no connection (`Into`). `|side|` names
    // the `Side` running the flow, for flows that refuse what one side cannot do.
    ($(
        $(#[doc = $doc:expr])*
        cancel: $cancel:expr,
        $vis:vis fn $name:ident / $blocking:ident
            (&$self:ident $(, $arg:ident : $ty:ty)* $(,)?) -> $out:ty, $bout:ty
            = |$side:ident| $flow:expr;
    )*) => {$(
        $(#[doc = $doc])*
        ///
        #[doc = concat!("Blocking twin: [`", stringify!($blocking), "`](Self::", stringify!($blocking), ").")]
        ///
        /// # Cancel safety
        ///
        #[doc = $cancel]
        $vis async fn $name<C>(&$self, con: &mut C $(, $arg: $ty)*) -> $crate::Result<$out>
        where
            C: $crate::redis::aio::ConnectionLike + Clone + Send + 'static,
        {
            let $side = $crate::flow::Side::Async;
            let out = $crate::flow::run_async_owned($flow, con).await?;
            Ok($crate::flow::Keep::keep(out, con))
        }

        $(#[doc = $doc])*
        ///
        #[doc = concat!("The blocking twin of [`", stringify!($name), "`](Self::", stringify!($name), "): \
            the same flow, on a blocking connection. Each round trip is bounded by the connection's \
            read and write timeouts (set them: a blocking connection has none by default).")]
        $vis fn $blocking(&$self, con: &mut dyn $crate::redis::ConnectionLike $(, $arg: $ty)*) -> $crate::Result<$bout> {
            let $side = $crate::flow::Side::Blocking;
            $crate::flow::run_blocking($flow, con).map(Into::into)
        }
    )*};
}

#[allow(unused_imports)] // used by the areas as they move onto flows
pub(crate) use twins;

/// A flow whose answer goes through `f`: how a single-limit check reuses the multi-limit one.
pub(crate) struct Map<F, G> {
    flow: F,
    f: Option<G>,
}

/// `flow`, with its answer mapped by `f`.
pub(crate) fn map<F: Flow, G: FnOnce(F::Out) -> Result<T>, T>(flow: F, f: G) -> Map<F, G> {
    Map { flow, f: Some(f) }
}

impl<F: Flow, G: FnOnce(F::Out) -> Result<T>, T> Flow for Map<F, G> {
    type Out = T;

    fn start(&mut self) -> Step<T> {
        let step = self.flow.start();
        self.mapped(step)
    }

    fn on(&mut self, event: Event) -> Step<T> {
        let step = self.flow.on(event);
        self.mapped(step)
    }

    fn deadline(&self) -> Option<Instant> {
        self.flow.deadline()
    }

    fn cancelled(&mut self) -> Option<Step<T>> {
        let step = self.flow.cancelled()?;
        Some(self.mapped(step))
    }
}

impl<F: Flow, G: FnOnce(F::Out) -> Result<T>, T> Map<F, G> {
    fn mapped(&mut self, step: Step<F::Out>) -> Step<T> {
        step.forward(|out| match self.f.take() {
            Some(f) => out.and_then(f),
            None => Err(Error::unexpected("flow", "finished twice")),
        })
    }
}

impl<T> Step<T> {
    /// The same step for a wrapping flow with another answer; `done` makes its answer from
    /// this one's.
    fn forward<U>(self, done: impl FnOnce(Result<T>) -> Result<U>) -> Step<U> {
        match self {
            Step::Call(inv) => Step::Call(inv),
            Step::Command(name, cmd) => Step::Command(name, cmd),
            Step::Pipeline(name, pipe) => Step::Pipeline(name, pipe),
            Step::Sleep(d) => Step::Sleep(d),
            Step::Done(out) => Step::Done(done(out)),
        }
    }
}

/// A flow whose outcome, error included, goes through `f`: how an error reply that means
/// "already done" (a stream's `BUSYGROUP`) becomes an answer.
pub(crate) struct Then<F, G> {
    flow: F,
    f: Option<G>,
}

/// `flow`, with its outcome (answer or error) mapped by `f`.
pub(crate) fn then<F: Flow, G: FnOnce(Result<F::Out>) -> Result<T>, T>(flow: F, f: G) -> Then<F, G> {
    Then { flow, f: Some(f) }
}

impl<F: Flow, G: FnOnce(Result<F::Out>) -> Result<T>, T> Flow for Then<F, G> {
    type Out = T;

    fn start(&mut self) -> Step<T> {
        self.flow.start().forward(|out| self.f.take().map_or_else(|| Err(twice()), |f| f(out)))
    }

    fn on(&mut self, event: Event) -> Step<T> {
        self.flow.on(event).forward(|out| self.f.take().map_or_else(|| Err(twice()), |f| f(out)))
    }

    fn deadline(&self) -> Option<Instant> {
        self.flow.deadline()
    }

    fn cancelled(&mut self) -> Option<Step<T>> {
        let step = self.flow.cancelled()?;
        Some(step.forward(|out| self.f.take().map_or_else(|| Err(twice()), |f| f(out))))
    }
}

fn twice() -> Error {
    Error::unexpected("flow", "finished twice")
}

/// One native command (or one pipeline of them), bounded by a deadline: the single-command twin
/// of [`Once`].
pub(crate) struct OnceCommand {
    step: Option<Step<Value>>,
    deadline: Option<Instant>,
}

impl OnceCommand {
    /// `cmd` (named `name` in errors), to be answered within `timeout` from now.
    pub(crate) fn new(name: &'static str, cmd: redis::Cmd, timeout: Duration) -> Self {
        OnceCommand { step: Some(Step::Command(name, cmd)), deadline: Some(crate::rules::deadline(timeout)) }
    }

    /// The commands of `pipe` in one round trip (not a transaction), to be answered within
    /// `timeout` from now: an array with one reply per command. An empty pipeline answers an
    /// empty array at once, without sending anything.
    pub(crate) fn pipeline(name: &'static str, pipe: redis::Pipeline, timeout: Duration) -> Self {
        let step = match pipe.is_empty() {
            true => Step::Done(Ok(Value::Array(Vec::new()))),
            false => Step::Pipeline(name, pipe),
        };
        OnceCommand { step: Some(step), deadline: Some(crate::rules::deadline(timeout)) }
    }
}

impl Flow for OnceCommand {
    type Out = Value;

    fn start(&mut self) -> Step<Value> {
        self.step.take().unwrap_or_else(|| Step::Done(Err(Error::unexpected("flow", "started twice"))))
    }

    fn on(&mut self, event: Event) -> Step<Value> {
        Step::Done(match event {
            Event::Reply(reply) => reply,
            Event::Woke => Err(Error::unexpected("flow", "woke without a sleep")),
        })
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}
