//! What the key extractor returns: whom a request is counted against and what it costs.

use http::request::Parts;

use crate::ratelimit::Subject;

/// Whom a request is counted against, and what it costs: what the key extractor returns.
///
/// One subject applies to every limit of the layer (`rl:{<subject>}:<limiter>` for each); give
/// one subject per limit ([`Key::per_limit`]) when they differ, e.g. per user and per tenant:
/// the user inside the tenant's scope and the tenant itself, so both keys share the tenant's hash
/// tag. A subject must be a valid hash tag (1..=1024 bytes, no `}`); a key the layer cannot use
/// is answered `400 Bad Request` (outcome `invalid`), never let through.
///
/// ```
/// use redis_primitives::tower::{Key, KeySubject};
/// let ip = Key::new("203.0.113.7");
/// let upload = Key::new("user-42").cost(5);
/// let both = Key::per_limit([KeySubject::new("ann").in_scope("tenant-7"), KeySubject::new("tenant-7")]);
/// assert_eq!(upload.weight(), 5);
/// # let _ = (ip, both);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    subjects: Vec<KeySubject>,
    pub(super) cost: u64,
}

/// One owned subject of a [`Key`]: an id, optionally inside a scope (the scope is then the hash
/// tag), as [`Subject`] but owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySubject {
    id: String,
    scope: Option<String>,
}

impl KeySubject {
    /// The subject `id`.
    pub fn new(id: impl Into<String>) -> Self {
        KeySubject { id: id.into(), scope: None }
    }

    /// The same subject inside `scope`.
    pub fn in_scope(self, scope: impl Into<String>) -> Self {
        KeySubject { scope: Some(scope.into()), ..self }
    }

    fn as_subject(&self) -> Subject<'_> {
        match &self.scope {
            None => Subject::new(&self.id),
            Some(scope) => Subject::new(&self.id).in_scope(scope),
        }
    }
}

impl<T: Into<String>> From<T> for KeySubject {
    fn from(id: T) -> Self {
        KeySubject::new(id)
    }
}

impl Key {
    /// `subject` for every limit, cost 1.
    pub fn new(subject: impl Into<KeySubject>) -> Self {
        Key { subjects: vec![subject.into()], cost: 1 }
    }

    /// One subject per limit, in the order of the limiters, cost 1.
    pub fn per_limit(subjects: impl IntoIterator<Item = impl Into<KeySubject>>) -> Self {
        Key { subjects: subjects.into_iter().map(Into::into).collect(), cost: 1 }
    }

    /// The request's cost (1..=10^12; a cost over a limit's capacity is never admitted).
    pub fn cost(self, cost: u64) -> Self {
        Key { cost, ..self }
    }

    /// The cost.
    pub fn weight(&self) -> u64 {
        self.cost
    }

    /// The subjects, one per limit.
    pub(super) fn subjects(&self, limits: usize) -> Vec<Subject<'_>> {
        match self.subjects.as_slice() {
            [one] => vec![one.as_subject(); limits],
            many => many.iter().map(KeySubject::as_subject).collect(),
        }
    }
}

/// A key extractor keying requests by a header's value (e.g. `x-api-key`); requests without it
/// (or with a value that is not visible ASCII) are not limited: combine it with your own
/// fallback when they must be.
pub fn header_key(name: &'static str) -> impl Fn(&Parts) -> Option<Key> + Send + Sync + 'static {
    move |req| req.headers.get(name)?.to_str().ok().filter(|v| !v.is_empty()).map(Key::new)
}
