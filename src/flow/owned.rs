//! Flows whose answer keeps the connection (a lock guard renews and releases on the one it was
//! acquired on), and the async driver that gives back what a cancelled flow took.

use super::{Flow, drive};
use crate::{Error, Result};

/// Which twin runs a flow: a flow may refuse what one side cannot do (a lock's watchdog renews
/// from a tokio task, so a blocking acquire refuses a lock that has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Async,
    Blocking,
}

/// The answer of a flow that keeps a connection handle once it is out (a lock guard renews and
/// releases on the connection it was acquired on): the async twin of a `twins!` method with two
/// answers makes its answer with `keep`; the blocking twin's comes from `Into`.
pub(crate) trait Keep<C> {
    /// The async answer.
    type Kept;

    /// The async answer, keeping a clone of `con`.
    fn keep(self, con: &C) -> Self::Kept;
}

/// [`run_async`](super::run_async) for a flow that may take something it must give back if cancelled (an
/// acquire), on a connection handle that can be cloned: if this future is dropped before the
/// flow finished, the flow's [`Flow::cancelled`] step and what follows run in a task spawned on
/// the current tokio runtime, on a clone of the handle. Without a runtime nothing is sent (the
/// flow's own backstop applies, e.g. a lease's TTL).
pub(crate) async fn run_async_owned<F, C>(flow: F, con: &mut C) -> Result<F::Out>
where
    F: Flow + Send + 'static,
    F::Out: Send + 'static,
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    let mut running = Running { flow: Some(flow), con: con.clone() };
    let out = match running.flow.as_mut() {
        Some(flow) => {
            let step = flow.start();
            drive(flow, step, con).await
        }
        None => Err(Error::unexpected("flow", "started twice")),
    };
    running.flow = None; // finished: nothing to give back
    out
}

/// A flow in progress under [`run_async_owned`]; dropping it unfinished hands the flow's
/// clean-up to a spawned task.
struct Running<F, C>
where
    F: Flow + Send + 'static,
    F::Out: Send + 'static,
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    flow: Option<F>,
    con: C,
}

impl<F, C> Drop for Running<F, C>
where
    F: Flow + Send + 'static,
    F::Out: Send + 'static,
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    fn drop(&mut self) {
        let Some(mut flow) = self.flow.take() else { return };
        let Some(step) = flow.cancelled() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut con = self.con.clone();
        runtime.spawn(async move {
            let _ = drive(&mut flow, step, &mut con).await;
        });
    }
}
