//! Reading a script's reply without trusting it: every shape mismatch becomes
//! [`Error::UnexpectedReply`] naming the script, never a panic.

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
        as_int(&self.value).ok_or_else(|| self.unexpected("an integer"))
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
        items.iter().map(|v| as_int(v).ok_or_else(|| self.unexpected("an array of integers"))).collect()
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        // Lua numbers may arrive as strings when a script keeps precision.
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}
