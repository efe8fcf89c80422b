//! The reader: `XREADGROUP … BLOCK` on a connection of its own, with a deadline of our own
//! around each read (the block time plus the command timeout). A read with no answer by then
//! (a failover, a dead or paused node: redis-rs' own response timeout did not end such a read on
//! a cluster) is abandoned and the connection replaced. What an abandoned read may have
//! delivered stays pending for this consumer and is reclaimed after the min-idle time.

use std::time::{Duration, Instant};

use redis::{Cmd, Value};
use tokio::sync::{mpsc, watch};

use super::super::wire::{self, RawEntry};
use super::connection::{Backoff, Fault, Link, fault};
use super::shutdown::{pause, wait_stop};
use super::{Delivery, Job, Outcome, Shared, create_group};
use crate::flow;
use crate::telemetry::WorkerEvent;
use crate::{Error, rules};

/// How a read ended.
enum Read {
    /// The reply (nil when the block time passed with nothing new).
    Reply(Value),
    /// No answer by the read's deadline: the connection was dropped.
    Abandoned,
    /// The read (or connecting for it) failed.
    Failed(Error),
    /// The worker is stopping: no read was sent.
    Stopped,
}

/// The reading connection, and its client ID for `CLIENT UNBLOCK` at shutdown (standalone only:
/// a cluster connection may move to another node, where the ID would name a stranger).
struct Reader<'a> {
    shared: &'a Shared,
    link: Link,
    /// For `CLIENT UNBLOCK` and recreating the group: never the blocked connection.
    control: Link,
    unblock_id: Option<i64>,
}

impl Reader<'_> {
    /// The reading connection's ID, asked on it (standalone); `None` on a cluster or when the
    /// server does not answer (then shutdown waits for the read's deadline instead).
    async fn learn_id(&mut self) {
        self.unblock_id = None;
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("ID");
        let ask = flow::map(self.link.command("CLIENT", cmd), |v| {
            wire::int(&v).ok_or_else(|| wire::bad("CLIENT ID", "an integer", &v))
        });
        let Some(conn) = self.link.conn.as_mut().filter(|_| self.shared.standalone) else { return };
        // Not through the link: a failure here must not drop the connection just opened.
        self.unblock_id = flow::run_async(ask, conn).await.ok();
    }

    /// One XREADGROUP, ended by its deadline; on shutdown a standalone read is unblocked.
    async fn read(&mut self, cmd: &Cmd, stop: &mut watch::Receiver<bool>) -> Read {
        if self.link.conn.is_none() {
            let connected = tokio::select! {
                connected = self.link.ensure() => connected.map(drop),
                _ = wait_stop(stop) => return Read::Stopped,
            };
            if let Err(e) = connected {
                return Read::Failed(e);
            }
            self.learn_id().await;
        }
        // Never a new read once stopping: only a read already in flight is waited for.
        if *stop.borrow() {
            return Read::Stopped;
        }
        let deadline = rules::later(Instant::now(), self.shared.opts.read_deadline());
        let unblock_id = self.unblock_id;
        let outcome = {
            let Some(conn) = self.link.conn.as_mut() else { return Read::Failed(no_connection()) };
            let read = tokio::time::timeout_at(deadline.into(), cmd.query_async::<Value>(conn));
            tokio::pin!(read);
            tokio::select! {
                r = &mut read => r,
                _ = wait_stop(stop) => loop {
                    // Stop reading, but let a read in flight answer: entries it delivers would sit in
                    // this consumer's pending list unseen until reclaimed. Unblock it (repeatedly:
                    // the read may reach the server after the first UNBLOCK); a cluster read ends by
                    // its deadline.
                    let control = &mut self.control;
                    let nudge = async {
                        if let Some(id) = unblock_id {
                            let mut cmd = redis::cmd("CLIENT");
                            cmd.arg("UNBLOCK").arg(id);
                            let _ = control.run(control.command("CLIENT", cmd)).await;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    };
                    tokio::select! {
                        r = &mut read => break r,
                        _ = nudge => {}
                    }
                },
            }
        };
        match outcome {
            Ok(Ok(v)) => Read::Reply(v),
            Ok(Err(e)) => Read::Failed(self.link.failed(e.into())),
            Err(_) => {
                self.link.conn = None;
                Read::Abandoned
            }
        }
    }
}

/// The reading connection is missing (it cannot be: `ensure` just opened it); a lost
/// connection, so it is retried.
fn no_connection() -> Error {
    Error::Connection(std::io::Error::new(std::io::ErrorKind::NotConnected, "no reading connection").into())
}

fn read_cmd(shared: &Shared, count: usize) -> Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(&shared.group)
        .arg(&shared.consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(shared.opts.block_ms())
        .arg("STREAMS")
        .arg(shared.stream.key())
        .arg(">");
    cmd
}

/// Reads new entries and hands them to the dispatcher until the worker stops.
pub(super) async fn reader(
    shared: &Shared,
    link: Link,
    control: Link,
    jobs: mpsc::UnboundedSender<Job>,
    out: mpsc::UnboundedSender<Outcome>,
) {
    let mut stop = shared.stop.subscribe();
    let mut reader = Reader { shared, link, control, unblock_id: None };
    reader.learn_id().await;
    let mut backoff = Backoff::default();
    while !shared.stopping() {
        let Some((slot, count)) = shared.take_slot(&mut stop, shared.opts.batch).await else { break };
        let mut held = Some(slot);
        let error = match reader.read(&read_cmd(shared, count), &mut stop).await {
            Read::Reply(v) => match wire::read_reply(&v) {
                Ok(entries) => {
                    backoff.reset();
                    for RawEntry { id, fields } in entries {
                        let Some(fields) = fields else {
                            let _ = out.send(Outcome::Gone(id));
                            continue;
                        };
                        let Some(slot) = shared.next_slot(&mut held).await else { return };
                        if !shared.dispatch(&jobs, Delivery { id, fields, deliveries: 1 }, slot) {
                            return;
                        }
                    }
                    continue;
                }
                Err(e) => e,
            },
            Read::Abandoned => {
                // Replaced on the next read, at once: the server may well be fine (a slow
                // failover), and the next read has a deadline of its own.
                shared.stats.event(WorkerEvent::ReadAbandoned, 1);
                continue;
            }
            Read::Failed(e) => e,
            Read::Stopped => break,
        };
        drop(held);
        match fault(&error) {
            Fault::Stop => {
                shared.fail(error);
                break;
            }
            Fault::LostGroup => {
                shared.stats.event(WorkerEvent::Retried, 1);
                // Failing here is retried with the next read, which meets NOGROUP again.
                if let Ok(create) =
                    create_group(&shared.stream, &shared.group, &shared.opts.start, &reader.control)
                {
                    let _ = reader.control.run(create).await;
                }
            }
            Fault::Retry => shared.stats.event(WorkerEvent::Retried, 1),
        }
        if !pause(&mut stop, backoff.next()).await {
            break;
        }
        // A reconnect (the connection manager's own) gives the connection a new client ID.
        reader.learn_id().await;
    }
}
