//! The fill's decisions, without a server: what each flow sends next for each answer.

use std::time::Duration;

use redis::Value;

use super::*;
use crate::flow::{Event, Flow, Step};

fn cache() -> Cache {
    Cache::new("seg").unwrap().with_lease(Duration::from_secs(10)).unwrap()
}

/// The script a step sends, or what else it is.
fn what<T: std::fmt::Debug>(step: &Step<T>) -> String {
    match step {
        Step::Call(inv) => inv.script().name().to_owned(),
        Step::Command(name, _) | Step::Pipeline(name, _) => (*name).to_owned(),
        Step::Sleep(d) => format!("sleep {}ms", d.as_millis()),
        Step::Done(out) => format!("done {out:?}"),
    }
}

impl std::fmt::Debug for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Start::Served(v) => write!(f, "served {v:?}"),
            Start::Lease(l) => write!(f, "lease (current {:?})", l.current),
        }
    }
}

/// The first flow of a fill, its first read sent.
fn started<'a>(fill: &'a Fill<'a>) -> Acquire<'a> {
    let mut flow = fill.acquire();
    assert_eq!(what(&flow.start()), "cache.get");
    flow
}

fn new_fill(c: &Cache) -> Fill<'_> {
    Fill::new(c, "k", Duration::from_secs(60)).unwrap()
}

fn get_reply(status: i64, data: Option<&[u8]>, pttl: i64) -> Event {
    let data = data.map_or(Value::Nil, |d| Value::BulkString(d.to_vec()));
    Event::Reply(Ok(Value::Array(vec![
        Value::Int(status),
        data,
        Value::Int(3),
        Value::Int(0),
        Value::Int(pttl),
    ])))
}

fn transient() -> Event {
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
    Event::Reply(Err(Error::from(redis::RedisError::from(io))))
}

fn permanent() -> Event {
    Event::Reply(Err(Error::WrongType { script: "cache.get".into(), message: "WRONGTYPE".into() }))
}

#[test]
fn a_miss_with_the_lease_asks_for_the_compute() {
    let c = cache();
    let fill = new_fill(&c);
    assert!(what(&started(&fill).on(get_reply(3, None, 10_000))).starts_with("done Ok(lease"));
    let mut flow = started(&fill);
    assert_eq!(what(&flow.on(get_reply(1, Some(b"v"), 0))), "done Ok(served Some([118]))");
}

/// A fill waiting for another caller's, whose last read met a lost connection and was sent
/// again.
fn waiting_after_a_lost_read<'a>(fill: &'a Fill<'a>) -> Acquire<'a> {
    let mut flow = started(fill);
    assert!(what(&flow.on(get_reply(4, None, 5_000))).starts_with("sleep"));
    assert_eq!(what(&flow.on(Event::Woke)), "cache.get");
    // A lost connection while waiting: read again (same token, idempotent).
    assert!(what(&flow.on(transient())).starts_with("sleep"));
    assert_eq!(what(&flow.on(Event::Woke)), "cache.get");
    flow
}

#[test]
fn only_transient_errors_while_waiting_are_retried_and_a_lease_a_lost_read_took_is_given_back() {
    let c = cache();
    let fill = new_fill(&c);
    // The first read is not retried (Redis down: fail fast); the lease it may have taken is
    // given back, and the release's own failure does not replace the answer.
    let mut flow = started(&fill);
    assert_eq!(what(&flow.on(transient())), "cache.release_lease");
    assert!(what(&flow.on(transient())).starts_with("done Err(Connection"));
    // While waiting, a transient error is retried; anything else ends the wait, after giving
    // back a lease the unanswered read may have taken.
    let mut flow = waiting_after_a_lost_read(&fill);
    assert_eq!(what(&flow.on(permanent())), "cache.release_lease");
    assert!(what(&flow.on(Event::Reply(Ok(Value::Int(0))))).starts_with("done Err(WrongType"));
    // A value found after a lost read is served once that read's lease is given back.
    let mut flow = waiting_after_a_lost_read(&fill);
    assert_eq!(what(&flow.on(get_reply(1, Some(b"v"), 0))), "cache.release_lease");
    assert_eq!(what(&flow.on(Event::Reply(Ok(Value::Int(0))))), "done Ok(served Some([118]))");
}

#[test]
fn the_wait_ends_at_the_max_wait_without_a_release_when_the_lease_is_known_to_be_another_s() {
    let c = cache().with_max_wait(Duration::ZERO);
    let fill = new_fill(&c);
    let mut flow = started(&fill);
    assert!(what(&flow.on(get_reply(4, None, 5_000))).starts_with("done Err(Timeout"));
    // Extreme values neither panic nor overflow.
    let c = cache().with_max_wait(Duration::MAX).with_deadline(Duration::MAX);
    let fill = new_fill(&c);
    let mut flow = started(&fill);
    assert!(what(&flow.on(get_reply(4, None, i64::MAX))).starts_with("sleep"));
}

fn leased(fill: &Fill<'_>, current: Option<&[u8]>) -> Lease {
    let mut flow = started(fill);
    let status = if current.is_some() { 2 } else { 3 };
    match flow.on(get_reply(status, current, 10_000)) {
        Step::Done(Ok(Start::Lease(l))) => l,
        other => panic!("{}", what(&other)),
    }
}

#[test]
fn the_write_back_stores_or_gives_the_lease_back() {
    let c = cache();
    let fill = new_fill(&c);
    // A value: stored (the store frees the lease).
    let mut flow = fill.write_back(leased(&fill, None), Ok::<_, std::io::Error>(Some(b"v".to_vec())));
    assert_eq!(what(&flow.start()), "cache.set");
    let stored = Event::Reply(Ok(Value::Array(vec![Value::Int(1), Value::Int(3), Value::Int(0)])));
    assert_eq!(what(&flow.on(stored)), "done Ok(Some([118]))");
    // A failed store: the lease is given back, and the store's error is the answer.
    let mut flow = fill.write_back(leased(&fill, None), Ok::<_, std::io::Error>(Some(b"v".to_vec())));
    flow.start();
    assert_eq!(what(&flow.on(transient())), "cache.release_lease");
    assert!(what(&flow.on(Event::Reply(Ok(Value::Int(1))))).starts_with("done Err(Connection"));
    // Nothing found, no negative caching: only the release.
    let mut flow = fill.write_back(leased(&fill, None), Ok::<_, std::io::Error>(None));
    assert_eq!(what(&flow.start()), "cache.release_lease");
    assert_eq!(what(&flow.on(transient())), "done Ok(None)");
    // A failed compute: the release, then the compute's error; a failed early refresh serves
    // the current value.
    let mut flow = fill.write_back(leased(&fill, None), Err(std::io::Error::other("db down")));
    assert_eq!(what(&flow.start()), "cache.release_lease");
    assert!(what(&flow.on(Event::Reply(Ok(Value::Int(1))))).starts_with("done Err(Compute"));
    let mut flow = fill.write_back(leased(&fill, Some(b"old")), Err(std::io::Error::other("db down")));
    assert_eq!(what(&flow.start()), "cache.release_lease");
    assert_eq!(what(&flow.on(Event::Reply(Ok(Value::Int(1))))), "done Ok(Some([111, 108, 100]))");
}

#[test]
fn negative_caching_stores_not_found() {
    let c = cache().with_negative_ttl(Duration::from_secs(5)).unwrap();
    let fill = new_fill(&c);
    let mut flow = fill.write_back(leased(&fill, None), Ok::<_, std::io::Error>(None));
    assert_eq!(what(&flow.start()), "cache.set");
}
