//! The crate's one reply toolkit: reading a script's or a command's reply without trusting it.
//! Every shape mismatch becomes [`Error::UnexpectedReply`] naming the script or command, never
//! a panic. [`Reply`] wraps a script's reply; the functions below read single values, for the
//! areas that parse native commands' replies (streams, cluster topology, INFO).

use redis::Value;

use crate::{Error, Result};

/// A script's raw reply, with the script's name for error messages.
///
/// ```
/// use redis::Value;
/// use redis_primitives::script::Reply;
///
/// let r = Reply::new("demo.x", Value::Array(vec![Value::Int(1), Value::Int(7)]));
/// assert_eq!(r.ints(2).unwrap(), vec![1, 7]);
/// let bad = Reply::new("demo.x", Value::Nil);
/// assert!(bad.ints(2).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Reply {
    script: &'static str,
    value: Value,
}

impl Reply {
    /// Wraps a reply of the script `script`.
    pub fn new(script: &'static str, value: Value) -> Self {
        Reply { script, value }
    }

    /// The raw value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Unwraps the raw value.
    pub fn into_value(self) -> Value {
        self.value
    }

    /// The error for a reply that is not what the contract says.
    pub fn unexpected(&self, expected: &str) -> Error {
        Error::unexpected(self.script, format!("expected {expected}, got {:?}", self.value))
    }

    /// An integer reply.
    pub fn int(&self) -> Result<i64> {
        int(&self.value).ok_or_else(|| self.unexpected("an integer"))
    }

    /// An array of exactly `n` integers.
    pub fn ints(&self, n: usize) -> Result<Vec<i64>> {
        let v = self.int_array()?;
        if v.len() != n {
            return Err(self.unexpected(&format!("an array of {n} integers")));
        }
        Ok(v)
    }

    /// An array of integers of any length.
    pub fn int_array(&self) -> Result<Vec<i64>> {
        let Value::Array(items) = &self.value else {
            return Err(self.unexpected("an array of integers"));
        };
        items.iter().map(|v| int(v).ok_or_else(|| self.unexpected("an array of integers"))).collect()
    }
}

/// The error for a reply of `command` that is not `what`.
pub(crate) fn bad(command: &str, what: &str, v: &Value) -> Error {
    Error::unexpected(command, format!("expected {what}, got {v:?}"))
}

/// A bulk, simple or verbatim string as UTF-8 text.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// A string's bytes (an integer as its decimal digits).
pub(crate) fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes().to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// An integer, also when sent as a string (Lua numbers may arrive so when a script keeps
/// precision).
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::VerbatimString { text, .. } => text.parse().ok(),
        _ => None,
    }
}

/// An array's (or RESP3 set's) items.
pub(crate) fn items<'a>(command: &str, v: &'a Value) -> Result<&'a [Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(bad(command, "an array", other)),
    }
}
