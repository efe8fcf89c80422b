//! The rate-limit script calls as typed calls ([`ScriptCall`]): build one with
//! [`RateLimiter::check_call`](super::RateLimiter::check_call) or
//! [`MultiLimit::check_call`](super::MultiLimit::check_call), run it with `query`/`query_async`,
//! or put many into a [`Batch`](crate::script::Batch).
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_primitives::ratelimit::{RateLimiter, SlidingWindow};
//! use redis_primitives::script::{Batch, ScriptCall};
//!
//! # fn demo(con: &mut redis::Connection) -> redis_primitives::Result<()> {
//! let api = RateLimiter::new("api", SlidingWindow::new(100, Duration::from_secs(60))?)?;
//! let batch: Batch<_> = ["ann", "bob"].iter().map(|u| api.check_call(*u, 1)).collect::<Result<_, _>>()?;
//! for decision in batch.query(con)? {
//!     println!("{:?}", decision?);
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use super::{Decision, Limit, MultiDecision, Request};
use crate::script::{Id, Invocation, Reply, ScriptCall};
use crate::{Error, Result};

/// One check of one or more limits, all-or-nothing: either every limit admits (and all are
/// consumed) or none is consumed. A peek ([`Check::peek`]) decides and writes nothing.
#[derive(Debug, Clone)]
pub struct Check {
    script: Id,
    keys: Vec<String>,
    args: Vec<u64>,
    cost: u64,
    peek: bool,
    penalty: bool,
}

impl Check {
    /// The check of `limits` (each with its key) for `request`. Refuses no limit, a cost of 0,
    /// a cost no limit can ever hold ([`Error::InsufficientCapacity`]), and a key given twice.
    pub(crate) fn new(limits: Vec<(String, Limit)>, request: Request) -> Result<Check> {
        if limits.is_empty() {
            return Err(Error::invalid("limits", "at least one limit"));
        }
        let cost = crate::rules::count("cost", request.cost)?;
        let capacity = limits.iter().map(|(_, l)| l.capacity()).min().unwrap_or(0);
        if cost > capacity {
            return Err(Error::InsufficientCapacity { cost, capacity });
        }
        for (i, (k, _)) in limits.iter().enumerate() {
            if limits[..i].iter().any(|(other, _)| other == k) {
                return Err(Error::invalid("limits", format!("{k} is checked twice in one call")));
            }
        }
        // One script decides every limit of a call: one algorithm per call.
        let script = limits[0].1.wire().0;
        let mut keys = Vec::with_capacity(limits.len());
        let mut args = Vec::with_capacity(limits.len() * 3);
        for (k, l) in limits {
            let (id, group) = l.wire();
            if id != script {
                return Err(Error::invalid("limits", "one call takes limits of one algorithm"));
            }
            keys.push(k);
            args.extend(group);
        }
        Ok(Check { script, keys, args, cost, peek: false, penalty: request.penalty })
    }

    /// The same call as a dry run: decides, writes nothing (sent read-only where the server
    /// allows).
    pub fn peek(mut self) -> Self {
        self.peek = true;
        self
    }

    /// The script this call runs.
    pub(crate) fn script_name(&self) -> &'static str {
        self.script.name()
    }

    /// The keys, in the order the limits were given.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(String::as_str)
    }
}

impl ScriptCall for Check {
    type Output = MultiDecision;

    fn invocation(&self) -> Result<Invocation<'static>> {
        let flags = u8::from(self.peek) | (u8::from(self.penalty) << 1);
        Ok(self
            .script
            .invoke()
            .read_only(self.peek)
            .key(&self.keys[..])
            .arg(self.cost)
            .arg(flags)
            .arg(&self.args[..]))
    }

    fn parse(&self, reply: Reply) -> Result<MultiDecision> {
        let v = reply.ints(3 + 4 * self.keys.len())?;
        let ms = |x: i64| Duration::from_millis(x.max(0) as u64);
        if v[2] < 0 || v[3..].chunks(4).any(|c| c[2] < 0) {
            // Checked before sending; reached only if the server's view differs (it should not).
            let capacity = v[3..].chunks(4).map(|c| c[0].max(0) as u64).min().unwrap_or(0);
            return Err(Error::InsufficientCapacity { cost: self.cost, capacity });
        }
        let limits = v[3..]
            .chunks(4)
            .map(|c| Decision {
                allowed: c[2] == 0,
                limit: c[0].max(0) as u64,
                remaining: c[1].max(0) as u64,
                retry_after: ms(c[2]),
                reset_after: ms(c[3]),
            })
            .collect();
        let allowed = v[0] == 1;
        let refused_by = (!allowed && v[1] >= 1).then(|| v[1] as usize - 1);
        Ok(MultiDecision { allowed, refused_by, retry_after: ms(v[2]), limits })
    }
}
