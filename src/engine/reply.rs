//! A script's reply: the outcome word, Redis TIME, then the payload, read
//! in the order the script writes it.

use redis::Value;

use super::{EngineError, EngineResult, Refusal};

/// A script's reply: the outcome word, Redis TIME in ms, then the payload.
pub(super) struct Reply {
    pub word: String,
    pub now_ms: i64,
    rest: Vec<Value>,
}

impl Reply {
    pub fn parse(value: Value) -> EngineResult<Reply> {
        let Value::Array(items) = value else {
            return Err(EngineError::Corrupt(format!("not an array: {value:?}")));
        };
        let mut it = items.into_iter();
        let word = it.next().as_ref().and_then(text).unwrap_or_default();
        let now_ms = it.next().as_ref().and_then(int).unwrap_or_default();
        if word.is_empty() || now_ms == 0 {
            return Err(EngineError::Corrupt("missing outcome or time".into()));
        }
        Ok(Reply {
            word,
            now_ms,
            rest: it.collect(),
        })
    }

    /// Maps a refusal word to an error; `accept` lists the words that are
    /// the caller's to handle.
    pub fn expect(self, accept: &[&str]) -> EngineResult<Reply> {
        if accept.contains(&self.word.as_str()) {
            return Ok(self);
        }
        match Refusal::from_word(&self.word) {
            Some(r) => Err(EngineError::Refused(r)),
            None => Err(EngineError::Corrupt(format!("outcome {}", self.word))),
        }
    }

    fn text(&self, i: usize) -> EngineResult<String> {
        self.rest
            .get(i)
            .and_then(text)
            .ok_or_else(|| EngineError::Corrupt(format!("field {i} of {}", self.word)))
    }

    fn int(&self, i: usize) -> EngineResult<i64> {
        self.rest
            .get(i)
            .and_then(int)
            .ok_or_else(|| EngineError::Corrupt(format!("field {i} of {}", self.word)))
    }

    /// The payload from its first field on, for a typed reply to read.
    pub fn fields(&self) -> Fields<'_> {
        Fields { reply: self, at: 0 }
    }
}

/// A cursor over a reply's payload: each typed reply reads its fields in the
/// order of its script's `return`, so that order is written once, beside the
/// struct it fills.
pub(super) struct Fields<'a> {
    reply: &'a Reply,
    at: usize,
}

impl Fields<'_> {
    pub fn int(&mut self) -> EngineResult<i64> {
        self.at += 1;
        self.reply.int(self.at - 1)
    }

    pub fn text(&mut self) -> EngineResult<String> {
        self.at += 1;
        self.reply.text(self.at - 1)
    }

    /// A text field where an empty string means none.
    pub fn opt_text(&mut self) -> EngineResult<Option<String>> {
        let t = self.text()?;
        Ok((!t.is_empty()).then_some(t))
    }

    /// A trailing field the script may leave out.
    pub fn try_int(&mut self) -> Option<i64> {
        self.at += 1;
        self.reply.rest.get(self.at - 1).and_then(int)
    }

    /// A trailing field the script may leave out.
    pub fn try_text(&mut self) -> Option<String> {
        self.at += 1;
        self.reply.rest.get(self.at - 1).and_then(text)
    }

    /// `"1"` (or 1) is true, anything else false.
    pub fn flag(&mut self) -> EngineResult<bool> {
        self.text().map(|t| t == "1")
    }

    /// Whether fields remain past the cursor.
    pub fn more(&self) -> bool {
        self.reply.rest.len() > self.at
    }
}

/// A reply value as text (bulk, simple or integer).
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}
