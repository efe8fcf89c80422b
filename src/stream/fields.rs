//! A stream entry's field/value pairs, and the trait for typed messages.

use std::fmt;

/// The field/value pairs of one stream entry, as bytes, in the order Redis keeps them.
///
/// Works as a small map: [`get`](Self::get) finds the first value of a field. Build one from any
/// iterator of pairs whose parts are bytes or strings.
///
/// ```
/// use redis_primitives::stream::Fields;
///
/// let f: Fields = [("order", "42"), ("kind", "paid")].into_iter().collect();
/// assert_eq!(f.get_str("kind"), Some("paid"));
/// assert_eq!(f.get("missing"), None);
/// let f = Fields::new().with("a", "1").with("b", b"\xff".as_slice());
/// assert_eq!(f.len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(Vec<(Vec<u8>, Vec<u8>)>);

impl Fields {
    /// No fields.
    pub fn new() -> Self {
        Fields(Vec::new())
    }

    /// Adds a pair (builder style).
    pub fn with(mut self, field: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.push(field, value);
        self
    }

    /// Adds a pair.
    pub fn push(&mut self, field: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.0.push((field.as_ref().to_vec(), value.as_ref().to_vec()));
    }

    /// The first value of `field`.
    pub fn get(&self, field: impl AsRef<[u8]>) -> Option<&[u8]> {
        let field = field.as_ref();
        self.0.iter().find(|(k, _)| k == field).map(|(_, v)| v.as_slice())
    }

    /// The first value of `field`, if it is UTF-8.
    pub fn get_str(&self, field: impl AsRef<[u8]>) -> Option<&str> {
        self.get(field).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no pair.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs, owned.
    pub fn into_vec(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.0
    }

    /// Removes the first `n` pairs (e.g. a dead letter's metadata).
    pub(crate) fn split_front(mut self, n: usize) -> (Fields, Fields) {
        let rest = self.0.split_off(n.min(self.0.len()));
        (self, Fields(rest))
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Fields(iter.into_iter().map(|(k, v)| (k.as_ref().to_vec(), v.as_ref().to_vec())).collect())
    }
}

type PairRef<'a> = (&'a [u8], &'a [u8]);

impl<'a> IntoIterator for &'a Fields {
    type Item = PairRef<'a>;
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (Vec<u8>, Vec<u8>)>, fn(&'a (Vec<u8>, Vec<u8>)) -> PairRef<'a>>;

    fn into_iter(self) -> Self::IntoIter {
        fn pair(p: &(Vec<u8>, Vec<u8>)) -> PairRef<'_> {
            (p.0.as_slice(), p.1.as_slice())
        }
        self.0.iter().map(pair as fn(&'a (Vec<u8>, Vec<u8>)) -> PairRef<'a>)
    }
}

impl IntoIterator for Fields {
    type Item = (Vec<u8>, Vec<u8>);
    type IntoIter = std::vec::IntoIter<(Vec<u8>, Vec<u8>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A typed message: how it becomes stream fields and how it is read back.
///
/// ```
/// use redis_primitives::stream::{Fields, StreamMessage};
///
/// struct Paid { order: u64 }
///
/// impl StreamMessage for Paid {
///     type Error = String;
///     fn to_fields(&self) -> Fields {
///         Fields::new().with("order", self.order.to_string())
///     }
///     fn from_fields(f: &Fields) -> Result<Self, String> {
///         let order = f.get_str("order").ok_or("no order")?.parse().map_err(|e| format!("order: {e}"))?;
///         Ok(Paid { order })
///     }
/// }
///
/// let back = Paid::from_fields(&Paid { order: 7 }.to_fields()).unwrap();
/// assert_eq!(back.order, 7);
/// ```
pub trait StreamMessage: Sized {
    /// Why fields could not be read as this message.
    type Error: fmt::Display;

    /// The entry's fields (at least one: XADD refuses an empty entry).
    fn to_fields(&self) -> Fields;

    /// Reads a delivered entry's fields.
    fn from_fields(fields: &Fields) -> Result<Self, Self::Error>;
}
