//! Capturing what the crate reports, for tests of its `tracing` and `metrics` features: a
//! `tracing` subscriber that records spans (with every field, including those recorded after
//! creation) and events, and a `metrics` recorder that keeps counters, gauges and histograms by
//! name and labels. Both are plain and in-memory: what a test asserts is exactly what an
//! application's own subscriber or exporter would receive.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// One span as the subscriber saw it.
#[derive(Debug, Clone)]
pub struct SpanRec {
    pub name: &'static str,
    pub target: &'static str,
    pub level: Level,
    pub fields: BTreeMap<String, String>,
    /// Closed (its last handle dropped).
    pub closed: bool,
}

/// One event.
#[derive(Debug, Clone)]
pub struct EventRec {
    pub target: &'static str,
    pub level: Level,
    pub fields: BTreeMap<String, String>,
    /// The span the event happened in (explicit parent, or the one entered on its thread).
    pub span: Option<u64>,
}

#[derive(Default)]
struct Seen {
    spans: Vec<SpanRec>,
    events: Vec<EventRec>,
    /// Spans entered, per thread.
    stacks: HashMap<std::thread::ThreadId, Vec<u64>>,
}

/// A `tracing` subscriber recording everything (every level, every target).
#[derive(Clone, Default)]
pub struct Traces {
    seen: Arc<Mutex<Seen>>,
    refs: Arc<Mutex<HashMap<u64, usize>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Traces {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every span so far (ids are positions + 1).
    pub fn spans(&self) -> Vec<SpanRec> {
        self.seen.lock().unwrap().spans.clone()
    }

    /// Spans named `name`.
    pub fn spans_named(&self, name: &str) -> Vec<SpanRec> {
        self.spans().into_iter().filter(|s| s.name == name).collect()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<EventRec> {
        self.seen.lock().unwrap().events.clone()
    }

    /// Events whose `message` field is `message`.
    pub fn events_with(&self, message: &str) -> Vec<EventRec> {
        self.events().into_iter().filter(|e| e.fields.get("message").is_some_and(|m| m == message)).collect()
    }
}

impl Subscriber for Traces {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let m = attrs.metadata();
        let mut seen = self.seen.lock().unwrap();
        seen.spans.push(SpanRec {
            name: m.name(),
            target: m.target(),
            level: *m.level(),
            fields,
            closed: false,
        });
        let id = seen.spans.len() as u64;
        self.refs.lock().unwrap().insert(id, 1);
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut seen = self.seen.lock().unwrap();
        if let Some(s) = seen.spans.get_mut(span.into_u64() as usize - 1) {
            values.record(&mut Fields(&mut s.fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let mut seen = self.seen.lock().unwrap();
        let span = event.parent().map(Id::into_u64).or_else(|| {
            if event.is_root() {
                None
            } else {
                seen.stacks.get(&std::thread::current().id()).and_then(|s| s.last().copied())
            }
        });
        let m = event.metadata();
        seen.events.push(EventRec { target: m.target(), level: *m.level(), fields, span });
    }

    fn enter(&self, span: &Id) {
        let mut seen = self.seen.lock().unwrap();
        seen.stacks.entry(std::thread::current().id()).or_default().push(span.into_u64());
    }

    fn exit(&self, span: &Id) {
        let mut seen = self.seen.lock().unwrap();
        if let Some(stack) = seen.stacks.get_mut(&std::thread::current().id())
            && let Some(at) = stack.iter().rposition(|s| *s == span.into_u64())
        {
            stack.remove(at);
        }
    }

    fn clone_span(&self, id: &Id) -> Id {
        *self.refs.lock().unwrap().entry(id.into_u64()).or_insert(0) += 1;
        id.clone()
    }

    fn try_close(&self, id: Id) -> bool {
        let mut refs = self.refs.lock().unwrap();
        let n = refs.entry(id.into_u64()).or_insert(1);
        *n = n.saturating_sub(1);
        if *n == 0 {
            refs.remove(&id.into_u64());
            drop(refs);
            if let Some(s) = self.seen.lock().unwrap().spans.get_mut(id.into_u64() as usize - 1) {
                s.closed = true;
            }
            return true;
        }
        false
    }
}

/// A metric's identity: its name and its labels, sorted.
pub type MetricKey = (String, Vec<(String, String)>);

#[derive(Default)]
struct Values {
    counters: HashMap<MetricKey, Arc<AtomicU64>>,
    gauges: HashMap<MetricKey, Arc<Mutex<f64>>>,
    histograms: HashMap<MetricKey, Arc<Mutex<Vec<f64>>>>,
    described: HashMap<String, String>,
}

/// A `metrics` recorder keeping every value in memory.
#[derive(Clone, Default)]
pub struct Metrics {
    values: Arc<Mutex<Values>>,
}

fn metric_key(key: &metrics::Key) -> MetricKey {
    let mut labels: Vec<(String, String)> =
        key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
    labels.sort();
    (key.name().to_owned(), labels)
}

fn matches(key: &MetricKey, name: &str, labels: &[(&str, &str)]) -> bool {
    key.0 == name && labels.iter().all(|(k, v)| key.1.iter().any(|(kk, vv)| kk == k && vv == v))
}

struct CounterCell(Arc<AtomicU64>);
impl metrics::CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

struct GaugeCell(Arc<Mutex<f64>>);
impl metrics::GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        *self.0.lock().unwrap() += value;
    }
    fn decrement(&self, value: f64) {
        *self.0.lock().unwrap() -= value;
    }
    fn set(&self, value: f64) {
        *self.0.lock().unwrap() = value;
    }
}

struct HistogramCell(Arc<Mutex<Vec<f64>>>);
impl metrics::HistogramFn for HistogramCell {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The sum of the counters named `name` whose labels include `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self.values.lock().unwrap();
        v.counters
            .iter()
            .filter(|(k, _)| matches(k, name, labels))
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Every value recorded into the histograms named `name` whose labels include `labels`.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let v = self.values.lock().unwrap();
        v.histograms
            .iter()
            .filter(|(k, _)| matches(k, name, labels))
            .flat_map(|(_, h)| h.lock().unwrap().clone())
            .collect()
    }

    /// The gauge named `name` with these labels (summed over other labels).
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let v = self.values.lock().unwrap();
        v.gauges.iter().filter(|(k, _)| matches(k, name, labels)).map(|(_, g)| *g.lock().unwrap()).sum()
    }

    /// Every metric name registered so far (counters, gauges, histograms).
    pub fn names(&self) -> Vec<String> {
        let v = self.values.lock().unwrap();
        let mut names: Vec<String> = v
            .counters
            .keys()
            .chain(v.gauges.keys())
            .chain(v.histograms.keys())
            .map(|k| k.0.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every metric key (name and labels) registered so far.
    pub fn keys(&self) -> Vec<MetricKey> {
        let v = self.values.lock().unwrap();
        v.counters.keys().chain(v.gauges.keys()).chain(v.histograms.keys()).cloned().collect()
    }

    /// The descriptions given with `describe_*`, by name.
    pub fn descriptions(&self) -> HashMap<String, String> {
        self.values.lock().unwrap().described.clone()
    }
}

impl metrics::Recorder for Metrics {
    fn describe_counter(&self, key: metrics::KeyName, _: Option<metrics::Unit>, d: metrics::SharedString) {
        self.values.lock().unwrap().described.insert(key.as_str().to_owned(), d.to_string());
    }
    fn describe_gauge(&self, key: metrics::KeyName, _: Option<metrics::Unit>, d: metrics::SharedString) {
        self.values.lock().unwrap().described.insert(key.as_str().to_owned(), d.to_string());
    }
    fn describe_histogram(&self, key: metrics::KeyName, _: Option<metrics::Unit>, d: metrics::SharedString) {
        self.values.lock().unwrap().described.insert(key.as_str().to_owned(), d.to_string());
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let cell = self.values.lock().unwrap().counters.entry(metric_key(key)).or_default().clone();
        metrics::Counter::from_arc(Arc::new(CounterCell(cell)))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        let cell = self.values.lock().unwrap().gauges.entry(metric_key(key)).or_default().clone();
        metrics::Gauge::from_arc(Arc::new(GaugeCell(cell)))
    }
    fn register_histogram(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        let cell = self.values.lock().unwrap().histograms.entry(metric_key(key)).or_default().clone();
        metrics::Histogram::from_arc(Arc::new(HistogramCell(cell)))
    }
}

/// One recorder for the whole test process, installed on first use (a `metrics` global
/// recorder can be set once): tests tell their metrics apart by their own labels.
pub fn global_metrics() -> &'static Metrics {
    static M: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let m = Metrics::new();
        metrics::set_global_recorder(m.clone()).expect("no other global metrics recorder");
        m
    })
}
