//! Waiting until admitted: check, and while refused sleep by the server's retry-after, until
//! admitted or the deadline. Sans-IO (see [`crate::flow`]), so `wait` and `wait_blocking` make
//! the same decisions.

use std::time::{Duration, Instant};

use super::MultiDecision;
use super::call::Check;
use crate::flow::{Event, Flow, Step};
use crate::script::{Reply, ScriptCall};

pub(crate) struct Wait {
    call: Check,
    deadline: Instant,
}

impl Wait {
    pub(crate) fn new(call: Check, timeout: Duration) -> Wait {
        Wait { call, deadline: crate::rules::deadline(timeout) }
    }

    fn send(&self) -> Step<MultiDecision> {
        Step::send(self.call.invocation(), &mut self.call.script_name())
    }
}

impl Flow for Wait {
    type Out = MultiDecision;

    fn start(&mut self) -> Step<MultiDecision> {
        self.send()
    }

    fn on(&mut self, event: Event) -> Step<MultiDecision> {
        let value = match event {
            Event::Woke => return self.send(),
            // Not retried, not even a connection error: the call may have run and consumed,
            // and a resend would charge the subject twice.
            Event::Reply(Err(e)) => return Step::Done(Err(e)),
            Event::Reply(Ok(v)) => v,
        };
        let d = match self.call.parse(Reply::new(self.call.script_name(), value)) {
            Ok(d) => d,
            Err(e) => return Step::Done(Err(e)),
        };
        match next_wait(&d, self.deadline, Instant::now()) {
            Some(pause) => Step::Sleep(pause),
            None => Step::Done(Ok(d)),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.deadline)
    }
}

/// How long to pause before the next attempt, or `None` to stop: admitted, or the server's
/// retry-after lands past the deadline (no point sleeping to be refused). A little jitter keeps
/// waiters from waking together; it never pushes the pause past the deadline.
fn next_wait(d: &MultiDecision, deadline: Instant, now: Instant) -> Option<Duration> {
    if d.allowed {
        return None;
    }
    let left = deadline.saturating_duration_since(now);
    if d.retry_after > left {
        return None;
    }
    let spread = u64::try_from(d.retry_after.as_micros() / 16).unwrap_or(u64::MAX).max(1);
    let pause = d.retry_after.saturating_add(Duration::from_micros(rand::random_range(0..=spread)));
    Some(pause.min(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(retry_ms: u64) -> MultiDecision {
        MultiDecision {
            allowed: false,
            refused_by: Some(0),
            retry_after: Duration::from_millis(retry_ms),
            limits: Vec::new(),
        }
    }

    #[test]
    fn sleeps_by_retry_after_and_gives_up_past_the_deadline() {
        let now = Instant::now();
        let deadline = now + Duration::from_millis(100);
        let pause = next_wait(&refused(40), deadline, now).unwrap();
        assert!(pause >= Duration::from_millis(40) && pause <= Duration::from_millis(100));
        assert_eq!(next_wait(&refused(101), deadline, now), None);
        let allowed = MultiDecision { allowed: true, ..refused(0) };
        assert_eq!(next_wait(&allowed, deadline, now), None);
        // No overflow with extreme values.
        assert_eq!(
            next_wait(&MultiDecision { retry_after: Duration::MAX, ..refused(0) }, deadline, now),
            None
        );
    }
}
