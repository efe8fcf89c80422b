//! The reclaim step: `XAUTOCLAIM` pages over the group's pending entries idle past the
//! min-idle time (entries of crashed consumers, this worker's failures, what an abandoned read
//! delivered), their delivery counts from `XPENDING`, trimmed entries cleared, entries past
//! `max_deliveries` dead-lettered.

use std::collections::HashSet;

use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::super::wire;
use super::connection::{Backoff, Fault, Link, fault};
use super::shutdown::{pause, wait_stop};
use super::{Delivery, Job, Shared, acking, lock};
use crate::Result;
use crate::flow;
use crate::telemetry::WorkerEvent;

/// Scans the pending entries every claim interval (at once again while a scan has more to
/// see) until the worker stops.
pub(super) async fn reclaimer(shared: &Shared, mut link: Link, jobs: mpsc::UnboundedSender<Job>) {
    let mut stop = shared.stop.subscribe();
    let mut cursor = String::from("0-0");
    let mut first = true;
    let mut backoff = Backoff::default();
    loop {
        if !first && cursor == "0-0" && !pause(&mut stop, shared.opts.claim_interval).await {
            break;
        }
        first = false;
        if shared.stopping() {
            break;
        }
        let Some((slot, count)) = shared.take_slot(&mut stop, shared.opts.batch).await else { break };
        // A page cut short by the stop leaves what it claimed pending: reclaimed later, never lost.
        let page = tokio::select! {
            page = reclaim_once(shared, &mut link, &cursor, slot, count, &jobs) => page,
            _ = wait_stop(&mut stop) => break,
        };
        match page {
            Ok(next) => {
                backoff.reset();
                cursor = next;
            }
            Err(e) => {
                cursor = "0-0".into();
                match fault(&e) {
                    Fault::Stop => {
                        shared.fail(e);
                        break;
                    }
                    // The reader recreates a lost group.
                    Fault::LostGroup | Fault::Retry => shared.stats.event(WorkerEvent::Retried, 1),
                }
                if !pause(&mut stop, backoff.next()).await {
                    break;
                }
            }
        }
    }
}

/// One XAUTOCLAIM page of up to `count` entries; returns the next cursor.
async fn reclaim_once(
    shared: &Shared,
    link: &mut Link,
    cursor: &str,
    slot: OwnedSemaphorePermit,
    count: usize,
    jobs: &mpsc::UnboundedSender<Job>,
) -> Result<String> {
    let mut held = Some(slot);
    let key = shared.stream.key();
    let mut cmd = redis::cmd("XAUTOCLAIM");
    cmd.arg(key)
        .arg(&shared.group)
        .arg(&shared.consumer)
        .arg(shared.opts.min_idle_ms())
        .arg(cursor)
        .arg("COUNT")
        .arg(count);
    let mut claimed = link.run(flow::map(link.command("XAUTOCLAIM", cmd), |v| wire::autoclaim(&v))).await?;
    if claimed.unreadable > 0 {
        // Redis 6.2 answers nil, without the ID, for a claimed entry whose data is gone, and
        // keeps it pending (now ours). Find those IDs in the page just scanned.
        claimed.deleted.extend(unreadable_ids(shared, link, cursor, &claimed, count).await?);
    }
    if !claimed.deleted.is_empty() {
        // Redis 7 already dropped these from the pending list; the ack is for 6.2 and costs
        // nothing when there is nothing left to ack.
        shared.stats.event(WorkerEvent::Gone, claimed.deleted.len() as u64);
        link.run(acking::xack(shared, &claimed.deleted, link.timeout)).await?;
    }
    let candidates: Vec<(String, super::super::Fields)> = {
        let in_flight = lock(&shared.in_flight);
        claimed
            .claimed
            .into_iter()
            .filter(|e| !in_flight.contains(&e.id))
            .filter_map(|e| Some((e.id, e.fields?)))
            .collect()
    };
    if candidates.is_empty() {
        return Ok(claimed.next);
    }
    // XAUTOCLAIM does not say how often an entry was delivered: ask XPENDING, one entry each.
    let mut pipe = redis::pipe();
    for (id, _) in &candidates {
        pipe.cmd("XPENDING").arg(key).arg(&shared.group).arg(id).arg(id).arg(1);
    }
    let n = candidates.len();
    let rows =
        link.run(flow::map(link.pipeline("XPENDING", pipe), |v| wire::replies("XPENDING", v, n))).await?;
    for ((id, fields), row) in candidates.into_iter().zip(rows) {
        let deliveries = match wire::pending_rows(&row)?.first() {
            Some(p) if p.id == id && p.consumer == shared.consumer => p.deliveries,
            // Acked meanwhile (by its old consumer), or claimed by another worker.
            _ => continue,
        };
        if deliveries > shared.opts.max_deliveries {
            let reason = format!(
                "not acknowledged after {} deliveries (its consumers stopped or timed out)",
                deliveries - 1
            );
            acking::dead_letter_once(shared, link, &id, &reason).await?;
            continue;
        }
        let Some(slot) = shared.next_slot(&mut held).await else { break };
        shared.stats.event(WorkerEvent::Reclaimed, 1);
        if !shared.dispatch(jobs, Delivery { id, fields, deliveries }, slot) {
            break;
        }
    }
    Ok(claimed.next)
}

/// The IDs of entries this consumer owns in the XAUTOCLAIM page `[cursor, next)` whose data is
/// gone: pending here, not being handled, not claimed with data, and absent from the stream.
async fn unreadable_ids(
    shared: &Shared,
    link: &mut Link,
    cursor: &str,
    claimed: &wire::AutoClaim,
    count: usize,
) -> Result<Vec<String>> {
    let key = shared.stream.key();
    let end = if claimed.next == "0-0" { "+".to_owned() } else { format!("({}", claimed.next) };
    let in_flight_len = lock(&shared.in_flight).len();
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(key).arg(&shared.group).arg(cursor).arg(end).arg(count + in_flight_len).arg(&shared.consumer);
    let rows = link.run(flow::map(link.command("XPENDING", cmd), |v| wire::pending_rows(&v))).await?;
    let with_data: HashSet<&str> = claimed.claimed.iter().map(|e| e.id.as_str()).collect();
    let suspects: Vec<String> = {
        let in_flight = lock(&shared.in_flight);
        rows.into_iter()
            .map(|row| row.id)
            .filter(|id| !with_data.contains(id.as_str()) && !in_flight.contains(id))
            .collect()
    };
    let mut pipe = redis::pipe();
    for id in &suspects {
        pipe.cmd("XRANGE").arg(key).arg(id).arg(id);
    }
    let n = suspects.len();
    let ranges =
        link.run(flow::map(link.pipeline("XRANGE", pipe), |v| wire::replies("XRANGE", v, n))).await?;
    let mut gone = Vec::new();
    for (id, range) in suspects.into_iter().zip(ranges) {
        if wire::entries("XRANGE", &range)?.is_empty() {
            gone.push(id);
        }
    }
    Ok(gone)
}
