//! The acker: XACKs what the handlers finished, in batches, and dead-letters entries that failed
//! their last allowed delivery. Both are safe to resend (an ack is idempotent, the dead-letter
//! script does nothing for an entry no longer pending), so transient errors are retried a few
//! times; what never lands stays pending and is delivered again: at least once, never lost.

use std::time::Duration;

use tokio::sync::mpsc;

use super::super::call::{DeadLetterCall, DeadLettered};
use super::super::wire;
use super::connection::{Backoff, Fault, Link, fault};
use super::{Outcome, Shared};
use crate::Result;
use crate::flow::{self, Flow, Once};
use crate::telemetry::WorkerEvent;

/// Attempts per ack or dead-letter before leaving the entries pending.
const ATTEMPTS: u32 = 6;

/// Acks outcomes until every sender is gone (the reader and the dispatcher ended).
pub(super) async fn acker(shared: &Shared, mut link: Link, mut outcomes: mpsc::UnboundedReceiver<Outcome>) {
    let timeout = link.timeout;
    let mut done: Vec<String> = Vec::new();
    let mut gone: Vec<String> = Vec::new();
    while let Some(first) = outcomes.recv().await {
        let mut next = Some(first);
        while let Some(outcome) = next.take() {
            match outcome {
                Outcome::Done(id) => {
                    shared.stats.event(WorkerEvent::Handled, 1);
                    done.push(id);
                }
                Outcome::Gone(id) => {
                    shared.stats.event(WorkerEvent::Gone, 1);
                    gone.push(id);
                }
                Outcome::Failed { id, deliveries, reason } => {
                    shared.stats.event(WorkerEvent::Failed, 1);
                    if deliveries >= shared.opts.max_deliveries {
                        // If this fails the entry stays pending; the reclaim step dead-letters it
                        // later (its delivery count is then past the limit).
                        let make = || dead_letter(shared, &id, &reason, timeout);
                        if let Some(moved) = retrying(shared, &mut link, make).await {
                            count_dead_letter(shared, &moved);
                        }
                    }
                    shared.release(&[id]);
                }
            }
            if done.len() < 4096 {
                next = outcomes.try_recv().ok();
            }
        }
        for (ids, count) in [(&mut done, true), (&mut gone, false)] {
            if ids.is_empty() {
                continue;
            }
            let acked = retrying(shared, &mut link, || Ok(xack(shared, ids, timeout))).await;
            if count {
                shared.stats.acked(acked.unwrap_or(0));
            }
            shared.release(ids);
            ids.clear();
        }
    }
}

/// `XACK` of `ids` within `timeout`; answers how many were acked.
pub(super) fn xack(shared: &Shared, ids: &[String], timeout: Duration) -> impl Flow<Out = u64> + use<> {
    let mut cmd = redis::cmd("XACK");
    cmd.arg(shared.stream.key()).arg(&shared.group).arg(ids);
    flow::map(flow::OnceCommand::new("XACK", cmd, timeout), |v| {
        wire::int(&v).and_then(|n| u64::try_from(n).ok()).ok_or_else(|| wire::bad("XACK", "a count", &v))
    })
}

/// The dead-letter script for an entry this consumer owns.
fn dead_letter(shared: &Shared, id: &str, reason: &str, timeout: Duration) -> Result<Once<DeadLetterCall>> {
    let call = shared.stream.dead_letter_call(
        &shared.group,
        &shared.consumer,
        id,
        reason,
        shared.opts.dead_maxlen,
    )?;
    Ok(Once::new(call, timeout))
}

fn count_dead_letter(shared: &Shared, moved: &DeadLettered) {
    match moved {
        DeadLettered::Moved { .. } => shared.stats.event(WorkerEvent::DeadLettered, 1),
        DeadLettered::Gone { .. } => shared.stats.event(WorkerEvent::Gone, 1),
        DeadLettered::NotPending => {}
    }
}

/// Dead-letters an entry once (the reclaim step's errors end its page and are retried there).
pub(super) async fn dead_letter_once(shared: &Shared, link: &mut Link, id: &str, reason: &str) -> Result<()> {
    let moved = link.run(dead_letter(shared, id, reason, link.timeout)?).await?;
    count_dead_letter(shared, &moved);
    Ok(())
}

/// Runs the flow `make` builds until it succeeds, retrying what the policy says is transient
/// (a fresh flow, so a fresh deadline, each time) at most [`ATTEMPTS`] times; once the worker is
/// stopping, only retries that end by its drain deadline (the first attempt always runs: a
/// handler that finished late still gets its ack sent). `None`: it did not land (a fatal error also stops the
/// worker).
async fn retrying<F: Flow>(
    shared: &Shared,
    link: &mut Link,
    mut make: impl FnMut() -> Result<F>,
) -> Option<F::Out> {
    let mut backoff = Backoff::default();
    for attempt in 1..=ATTEMPTS {
        let e = match make() {
            Ok(flow) => match link.run(flow).await {
                Ok(out) => return Some(out),
                Err(e) => e,
            },
            Err(e) => e,
        };
        let pause = backoff.next();
        match fault(&e) {
            Fault::Retry if attempt < ATTEMPTS && shared.may_retry_within(pause + link.timeout) => {
                shared.stats.event(WorkerEvent::Retried, 1);
                tokio::time::sleep(pause).await;
            }
            // Given up: the entries stay pending. A lost group took its pending entries with it.
            Fault::Retry | Fault::LostGroup => return None,
            Fault::Stop => {
                shared.fail(e);
                return None;
            }
        }
    }
    None
}
