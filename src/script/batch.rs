//! Many calls in one pipeline ([`Batch`]), with NOSCRIPT recovery for the entries that need it,
//! on the same sans-IO plan machinery as a single call (see `invoke.rs`).

use std::ops::ControlFlow;

use redis::{Pipeline, RedisResult, Value};

use super::invoke::{Plan, Step, classify, drive, drive_async, is_noscript, load_cmd};
use super::{Invocation, Reply, Script, ScriptCall};
use crate::telemetry::{CallSpan, NoScript};
use crate::{Error, Result, telemetry};

/// Many calls in one pipeline: one round trip for all of them. Entries that met NOSCRIPT are
/// loaded and re-sent (only those; the others ran once and are not repeated), which redis-rs's
/// own `invoke_script` in a pipeline does not do.
///
/// On a cluster, a pipeline goes to one node: [`query_async`](Batch::query_async) needs all
/// entries in one hash slot (the same hash tag), otherwise redis-rs refuses it with CROSSSLOT;
/// [`query_cluster`](Batch::query_cluster) splits the batch into one pipeline per slot.
///
/// ```no_run
/// # use redis_primitives::script::{Batch, Invocation, Reply, ScriptCall};
/// # struct Release(&'static str);
/// # impl ScriptCall for Release {
/// #     type Output = i64;
/// #     fn invocation(&self) -> redis_primitives::Result<Invocation<'static>> {
/// #         Ok(redis_primitives::script::get("lock.release")?.invoke().key("lock:{a}").arg(self.0))
/// #     }
/// #     fn parse(&self, reply: Reply) -> redis_primitives::Result<i64> { reply.int() }
/// # }
/// # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
/// let batch: Batch<Release> = vec![Release("t1"), Release("t2")].into_iter().collect();
/// for outcome in batch.query(con)? {
///     println!("{:?}", outcome?);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Batch<C> {
    calls: Vec<C>,
}

impl<C> Default for Batch<C> {
    fn default() -> Self {
        Batch { calls: Vec::new() }
    }
}

impl<C> FromIterator<C> for Batch<C> {
    fn from_iter<I: IntoIterator<Item = C>>(iter: I) -> Self {
        Batch { calls: iter.into_iter().collect() }
    }
}

impl<C: ScriptCall> Batch<C> {
    /// An empty batch.
    pub fn new() -> Self {
        Batch { calls: Vec::new() }
    }

    /// Adds a call.
    pub fn push(&mut self, call: C) -> &mut Self {
        self.calls.push(call);
        self
    }

    /// Number of calls.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// True when there is no call.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Sends the batch on a blocking connection. The outer error is for the batch as a whole
    /// (connection lost); each entry has its own outcome, in order.
    pub fn query(&self, con: &mut dyn redis::ConnectionLike) -> Result<Vec<Result<C::Output>>> {
        let invs = self.invocations();
        let values = match BatchPlan::new(&invs) {
            Some(mut plan) => {
                let span = CallSpan::batch(plan.invs.len());
                let out = span.in_scope(|| drive(&mut plan, con));
                span.finish(&out, plan.trips, plan.noscript());
                out?
            }
            None => Vec::new(),
        };
        Ok(self.finish(invs, values))
    }

    /// Sends the batch on an async connection.
    pub async fn query_async<K>(&self, con: &mut K) -> Result<Vec<Result<C::Output>>>
    where
        K: redis::aio::ConnectionLike + Send,
    {
        let invs = self.invocations();
        let values = match BatchPlan::new(&invs) {
            Some(plan) => drive_batch(plan, con).await?,
            None => Vec::new(),
        };
        Ok(self.finish(invs, values))
    }

    /// Sends the batch on a cluster: one pipeline per hash slot (a pipeline reaches one node),
    /// all in flight at once, each recovering from NOSCRIPT on its own node. The outer error is
    /// for a pipeline that failed as a whole.
    ///
    /// ```no_run
    /// # use redis_primitives::script::{Batch, Invocation};
    /// # async fn demo(con: &mut redis::cluster_async::ClusterConnection) -> redis_primitives::Result<()> {
    /// let release = redis_primitives::script::get("lock.release")?;
    /// let batch: Batch<Invocation<'static>> =
    ///     ["a", "b", "c"].iter().map(|r| release.invoke().key(format!("lock:{{{r}}}")).arg("t")).collect();
    /// let outcomes = batch.query_cluster(con).await?; // three slots, three pipelines, one wait
    /// # Ok(()) }
    /// ```
    pub async fn query_cluster(
        &self,
        con: &mut redis::cluster_async::ClusterConnection,
    ) -> Result<Vec<Result<C::Output>>> {
        let invs = self.invocations();
        let mut groups: std::collections::HashMap<redis::cluster_routing::Slot, Vec<usize>> =
            Default::default();
        for (i, inv) in invs.iter().enumerate() {
            if let Ok(inv) = inv {
                let first_key = inv.first_key();
                groups.entry(redis::cluster_routing::Slot::for_key(first_key)).or_default().push(i);
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (_, members) in groups {
            let group: Vec<Result<Invocation<'static>>> =
                members.iter().filter_map(|&i| invs[i].as_ref().ok().cloned()).map(Ok).collect();
            let mut con = con.clone();
            tasks.spawn(async move {
                let values = match BatchPlan::new(&group) {
                    Some(plan) => drive_batch(plan, &mut con).await,
                    None => Ok(Vec::new()),
                };
                (members, values)
            });
        }
        let mut by_index: Vec<Option<Result<Value>>> = invs.iter().map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            let (members, values) =
                joined.map_err(|e| Error::unexpected("batch", format!("a pipeline task failed: {e}")))?;
            for (i, v) in members.into_iter().zip(values?) {
                by_index[i] = Some(v);
            }
        }
        // finish() pairs the replies, in order, with the entries that were sent.
        let values = by_index.into_iter().flatten().collect();
        Ok(self.finish(invs, values))
    }

    fn invocations(&self) -> Vec<Result<Invocation<'static>>> {
        self.calls.iter().map(|c| c.invocation().and_then(|inv| inv.validate().map(|()| inv))).collect()
    }

    /// Pairs each sent entry's reply with its call; entries refused before sending keep their
    /// error.
    fn finish(
        &self,
        invs: Vec<Result<Invocation<'static>>>,
        values: Vec<Result<Value>>,
    ) -> Vec<Result<C::Output>> {
        let mut values = values.into_iter();
        self.calls
            .iter()
            .zip(invs)
            .map(|(call, inv)| match inv {
                Err(e) => Err(e),
                Ok(inv) => match values.next() {
                    Some(Ok(v)) => call.parse(Reply::new(inv.script().name(), v)),
                    Some(Err(e)) => Err(e),
                    None => Err(Error::unexpected(inv.script().name(), "batch reply too short")),
                },
            })
            .collect()
    }
}

/// A batch pipeline (and its recovery round), in its span.
async fn drive_batch<C>(mut plan: BatchPlan<'_>, con: &mut C) -> Result<Vec<Result<Value>>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let span = CallSpan::batch(plan.invs.len());
    let out = span.instrument(drive_async(&mut plan, con)).await;
    span.finish(&out, plan.trips, plan.noscript());
    out
}

/// Many invocations in one pipeline; NOSCRIPT entries are re-sent after their scripts load.
struct BatchPlan<'a> {
    invs: Vec<&'a Invocation<'static>>,
    results: Vec<Option<Result<Value>>>,
    /// Entries (positions in `invs`) sent in the recovery pipeline, after `loads` SCRIPT LOADs.
    retry: Vec<usize>,
    loads: Vec<&'static Script>,
    /// Round trips so far, and the scripts whose load failed (telemetry).
    trips: u32,
    failed_loads: usize,
}

impl<'a> BatchPlan<'a> {
    fn new(invs: &'a [Result<Invocation<'static>>]) -> Option<Self> {
        let invs: Vec<_> = invs.iter().filter_map(|i| i.as_ref().ok()).collect();
        if invs.is_empty() {
            return None;
        }
        let results = invs.iter().map(|_| None).collect();
        Some(BatchPlan { invs, results, retry: Vec::new(), loads: Vec::new(), trips: 0, failed_loads: 0 })
    }

    /// Whether a NOSCRIPT was met, and whether every load it caused succeeded.
    fn noscript(&self) -> NoScript {
        match (self.loads.is_empty(), self.failed_loads) {
            (true, _) => NoScript::None,
            (false, 0) => NoScript::Recovered,
            (false, _) => NoScript::Failed,
        }
    }

    fn pipeline(&self, entries: &[usize]) -> Pipeline {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for s in &self.loads {
            pipe.add_command(load_cmd(s));
        }
        for &i in entries {
            // Batches always use EVALSHA: one pipeline, one command form, any server version.
            pipe.add_command(self.invs[i].evalsha(false));
        }
        pipe
    }
}

impl Plan for BatchPlan<'_> {
    type Out = Vec<Result<Value>>;

    fn first(&mut self) -> Step {
        self.trips = 1;
        let all: Vec<usize> = (0..self.invs.len()).collect();
        Step::Pipe(self.pipeline(&all))
    }

    fn advance(&mut self, reply: RedisResult<Value>) -> ControlFlow<Result<Self::Out>, Step> {
        let recovering = !self.loads.is_empty();
        let sent: Vec<usize> = if recovering { self.retry.clone() } else { (0..self.invs.len()).collect() };
        let values = match reply {
            Ok(Value::Array(values)) if values.len() == self.loads.len() + sent.len() => values,
            Ok(other) => {
                let detail = format!("batch reply of {} entries expected, got {other:?}", sent.len());
                return ControlFlow::Break(Err(Error::unexpected("batch", detail)));
            }
            Err(e) => return ControlFlow::Break(Err(Error::from(e))),
        };
        let mut values = values.into_iter();
        // A failed SCRIPT LOAD (e.g. NOPERM) explains why its entries cannot run.
        let mut load_error = None;
        for s in &self.loads {
            let loaded = match values.next().map(Value::extract_error) {
                Some(Err(e)) => {
                    load_error.get_or_insert(e);
                    false
                }
                _ => true,
            };
            self.failed_loads += usize::from(!loaded);
            telemetry::noscript(s.name(), loaded);
        }
        let mut retry = Vec::new();
        for (&i, value) in sent.iter().zip(values) {
            let script = self.invs[i].script();
            self.results[i] = Some(match value.extract_error() {
                Ok(v) => Ok(v),
                Err(e) if is_noscript(&e) && !recovering => {
                    retry.push(i);
                    continue;
                }
                Err(e) => Err(classify(script, load_error.clone().unwrap_or(e))),
            });
        }
        if !retry.is_empty() {
            let mut loads: Vec<&'static Script> = retry.iter().map(|&i| self.invs[i].script()).collect();
            loads.sort_by(|a, b| a.sha1().cmp(b.sha1()));
            loads.dedup_by(|a, b| a.sha1() == b.sha1());
            self.loads = loads;
            self.retry = retry;
            self.trips += 1;
            return ControlFlow::Continue(Step::Pipe(self.pipeline(&self.retry)));
        }
        let out = self.results.iter_mut().map(|r| r.take().unwrap_or_else(|| Ok(Value::Nil))).collect();
        ControlFlow::Break(Ok(out))
    }
}
