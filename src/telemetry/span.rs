//! The span (and metrics) of one script call or one batch pipeline.

#[allow(unused_imports)] // the hooks' names and types, used with the features on
use super::*;

/// Whether a NOSCRIPT was met during a script call, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoScript {
    /// None met.
    None,
    /// Met; the script was loaded and the retry ran.
    Recovered,
    /// Met; the load or the retry failed.
    Failed,
}

impl NoScript {
    #[cfg(feature = "tracing")]
    fn as_str(self) -> &'static str {
        match self {
            NoScript::None => "none",
            NoScript::Recovered => "recovered",
            NoScript::Failed => "failed",
        }
    }
}

/// The span (and metrics) of one script call or one batch pipeline: started before the first
/// send, finished with the outcome. Dropped unfinished (the caller's deadline cut the call, or
/// the future was dropped), it reports the outcome `cancelled`. Without the features it is an
/// empty struct and every method is an inlined no-op.
pub(crate) struct CallSpan<'a> {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    script: &'a str,
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    finished: bool,
    #[cfg(not(any(feature = "tracing", feature = "metrics")))]
    _script: std::marker::PhantomData<&'a str>,
}

impl<'a> CallSpan<'a> {
    /// A script call of `script` whose first key is `first_key`.
    #[inline]
    pub(crate) fn script(script: &'a str, first_key: Option<&[u8]>) -> Self {
        #[cfg(feature = "tracing")]
        let span = {
            use tracing::field::Empty;
            let span = tracing::debug_span!(
                target: "redis_primitives::script",
                "script_call",
                script,
                slot = Empty,
                outcome = Empty,
                noscript = Empty,
                round_trips = Empty
            );
            if !span.is_disabled()
                && let Some(key) = first_key
            {
                span.record("slot", key_slot(key));
            }
            span
        };
        CallSpan::started(
            #[cfg(feature = "tracing")]
            span,
            script,
        )
    }

    /// A pipeline of `calls` script calls ([`Batch`](crate::script::Batch)): a span only (each
    /// entry is not a call of its own in the metrics).
    #[inline]
    pub(crate) fn batch(calls: usize) -> Self {
        #[cfg(feature = "tracing")]
        let span = {
            use tracing::field::Empty;
            tracing::debug_span!(
                target: "redis_primitives::script",
                "script_batch",
                calls,
                outcome = Empty,
                noscript = Empty,
                round_trips = Empty
            )
        };
        // An empty name: batches are not counted as script calls in the metrics.
        CallSpan::started(
            #[cfg(feature = "tracing")]
            span,
            "",
        )
    }

    /// Started now, for `script` (what the metrics count it as).
    #[inline]
    #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(unused_variables))]
    fn started(#[cfg(feature = "tracing")] span: tracing::Span, script: &'a str) -> Self {
        CallSpan {
            #[cfg(feature = "tracing")]
            span,
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
            #[cfg(any(feature = "tracing", feature = "metrics"))]
            script,
            #[cfg(any(feature = "tracing", feature = "metrics"))]
            finished: false,
            #[cfg(not(any(feature = "tracing", feature = "metrics")))]
            _script: std::marker::PhantomData,
        }
    }

    /// Runs `f` inside the span (blocking calls).
    #[inline]
    pub(crate) fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        #[cfg(feature = "tracing")]
        {
            self.span.in_scope(f)
        }
        #[cfg(not(feature = "tracing"))]
        {
            f()
        }
    }

    /// `fut`, entered in the span whenever it is polled (async calls).
    #[inline]
    pub(crate) fn instrument<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        #[cfg(feature = "tracing")]
        {
            tracing::Instrument::instrument(fut, self.span.clone())
        }
        #[cfg(not(feature = "tracing"))]
        {
            fut
        }
    }

    /// The call ended with `outcome` after `round_trips` round trips.
    #[inline]
    pub(crate) fn finish<T>(mut self, outcome: &crate::Result<T>, round_trips: u32, noscript: NoScript) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        {
            let kind = match outcome {
                Ok(_) => "ok",
                Err(e) => error_kind(e),
            };
            self.finished = true;
            self.report(kind, round_trips, noscript);
        }
        #[cfg(not(any(feature = "tracing", feature = "metrics")))]
        {
            let _ = (&mut self, outcome, round_trips, noscript);
        }
    }

    #[cfg(any(feature = "tracing", feature = "metrics"))]
    fn report(&self, kind: &'static str, round_trips: u32, noscript: NoScript) {
        #[cfg(feature = "tracing")]
        {
            self.span.record("outcome", kind);
            if round_trips > 0 {
                self.span.record("round_trips", round_trips);
                self.span.record("noscript", noscript.as_str());
            }
        }
        #[cfg(feature = "metrics")]
        if !self.script.is_empty() {
            metrics::counter!(SCRIPT_CALLS, "script" => self.script.to_owned(), "outcome" => kind)
                .increment(1);
            metrics::histogram!(SCRIPT_CALL_SECONDS, "script" => self.script.to_owned())
                .record(self.started.elapsed().as_secs_f64());
        }
        let _ = (round_trips, noscript, self.script);
    }
}

#[cfg(any(feature = "tracing", feature = "metrics"))]
impl Drop for CallSpan<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.report("cancelled", 0, NoScript::None);
        }
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the bytes between the
/// first `{` and the next `}`, when not empty) or of the whole key, modulo 16384.
#[cfg(any(feature = "tracing", test))]
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}
