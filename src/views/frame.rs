//! View rows held column-wise: the rows a node keeps in memory between federated
//! questions. Rows as `Vec<serde_json::Value>` cost 32 bytes a cell plus a heap
//! string per text (and numbers are text too, with `arbitrary_precision`); here a
//! cell is a one-byte tag and an 8-byte payload, and each distinct text is stored
//! once. Values come back exactly as they went in (a number keeps its JSON text).
//!
//! `HeldRows` keeps a view current as data changes: a sorted `Frame` built by a
//! scan, and the rows of resources changed since, row-wise, folded into a new frame
//! once they grow past a fraction of it.

use hashbrown::HashTable;
use serde_json::{Number, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::BuildHasher;

use super::Row;

/// What a cell holds; the payload's meaning follows from it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Tag {
    Null,
    False,
    True,
    /// An integer whose JSON text is its canonical decimal form (payload: the bits).
    Int,
    /// A number whose JSON text is the shortest form of its `f64` (payload: the bits).
    Float,
    /// Any other number (payload: the id of its exact JSON text).
    Number,
    /// Payload: the id of the text.
    Str,
    /// An array or object (payload: the id of its JSON text).
    Json,
}

/// One cell, borrowed from a `Frame` or from a plain row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CellRef<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A number by its exact JSON text.
    Number(&'a str),
    Str(&'a str),
    /// An array or object by its JSON text.
    Json(&'a str),
    /// An array or object of a plain row.
    Value(&'a Value),
}

impl<'a> CellRef<'a> {
    pub fn of(v: &'a Value) -> CellRef<'a> {
        match v {
            Value::Null => CellRef::Null,
            Value::Bool(b) => CellRef::Bool(*b),
            Value::Number(n) => CellRef::Number(n.as_str()),
            Value::String(s) => CellRef::Str(s),
            other => CellRef::Value(other),
        }
    }

    pub fn is_null(self) -> bool {
        self == CellRef::Null
    }

    /// The cell as a finite number (a boolean as 1 or 0), as `Value::as_f64` reads it.
    pub fn number(self) -> Option<f64> {
        let x = match self {
            CellRef::Bool(b) => return Some(if b { 1.0 } else { 0.0 }),
            CellRef::Int(i) => i as f64,
            CellRef::Float(x) => x,
            CellRef::Number(t) => t.parse::<f64>().ok()?,
            _ => return None,
        };
        x.is_finite().then_some(x)
    }

    /// A number's JSON text (`None` for anything else).
    pub fn number_text(self) -> Option<Cow<'a, str>> {
        match self {
            CellRef::Int(i) => Some(Cow::Owned(i.to_string())),
            CellRef::Float(x) => Number::from_f64(x).map(|n| Cow::Owned(n.as_str().to_string())),
            CellRef::Number(t) => Some(Cow::Borrowed(t)),
            _ => None,
        }
    }

    /// The cell as text: a string as itself, anything else as its JSON (`null` too).
    pub fn text(self) -> Cow<'a, str> {
        match self {
            CellRef::Null => Cow::Borrowed("null"),
            CellRef::Bool(b) => Cow::Borrowed(if b { "true" } else { "false" }),
            CellRef::Str(s) | CellRef::Json(s) => Cow::Borrowed(s),
            CellRef::Value(v) => Cow::Owned(v.to_string()),
            number => number.number_text().unwrap_or_default(),
        }
    }

    pub fn to_value(self) -> Value {
        match self {
            CellRef::Null => Value::Null,
            CellRef::Bool(b) => Value::Bool(b),
            CellRef::Int(i) => Value::Number(i.into()),
            CellRef::Float(x) => Number::from_f64(x).map_or(Value::Null, Value::Number),
            // The texts were JSON when they were stored.
            CellRef::Number(t) | CellRef::Json(t) => serde_json::from_str(t).unwrap_or(Value::Null),
            CellRef::Str(s) => Value::String(s.to_string()),
            CellRef::Value(v) => v.clone(),
        }
    }
}

/// One row, of a `Frame` or plain.
#[derive(Clone, Copy, Debug)]
pub enum RowRef<'a> {
    Plain(&'a [Value]),
    Held { frame: &'a Frame, at: usize },
}

impl<'a> RowRef<'a> {
    /// The cell of column `column` (as the view orders its columns).
    pub fn get(self, column: usize) -> CellRef<'a> {
        match self {
            RowRef::Plain(row) => row.get(column).map_or(CellRef::Null, CellRef::of),
            RowRef::Held { frame, at } => frame.cell(at, column),
        }
    }
}

/// Each of a resource's plain rows with its key and its place among them, as
/// `HeldRows::rows` gives them.
pub fn plain_rows(key: i64, rows: &[Row]) -> impl Iterator<Item = (i64, usize, RowRef<'_>)> {
    rows.iter().enumerate().map(move |(i, r)| (key, i, RowRef::Plain(r)))
}

#[derive(Default, Debug)]
struct Column {
    tags: Vec<Tag>,
    data: Vec<u64>,
}

/// Rows of one view, column-wise, in ascending resource key; a resource's rows are
/// adjacent, in the order the view produced them. Rows of a resource can be marked
/// dead (the resource changed); they are skipped, and gone at the next rebuild.
#[derive(Default, Debug)]
pub struct Frame {
    keys: Vec<i64>,
    columns: Vec<Column>,
    /// Distinct texts, back to back; `ends[id]` is where text `id` ends.
    text: String,
    ends: Vec<usize>,
    /// A bit per row: set when the row's resource changed after the frame was built.
    dead: Vec<u64>,
    dead_rows: usize,
}

impl Frame {
    /// Rows held, dead ones included.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn live(&self) -> usize {
        self.keys.len() - self.dead_rows
    }

    fn text(&self, id: u64) -> &str {
        let id = id as usize;
        let start = if id == 0 { 0 } else { self.ends[id - 1] };
        &self.text[start..self.ends[id]]
    }

    fn cell(&self, at: usize, column: usize) -> CellRef<'_> {
        let Some(c) = self.columns.get(column) else {
            return CellRef::Null;
        };
        let data = c.data[at];
        match c.tags[at] {
            Tag::Null => CellRef::Null,
            Tag::False => CellRef::Bool(false),
            Tag::True => CellRef::Bool(true),
            Tag::Int => CellRef::Int(data as i64),
            Tag::Float => CellRef::Float(f64::from_bits(data)),
            Tag::Number => CellRef::Number(self.text(data)),
            Tag::Str => CellRef::Str(self.text(data)),
            Tag::Json => CellRef::Json(self.text(data)),
        }
    }

    fn is_dead(&self, at: usize) -> bool {
        self.dead_rows > 0 && self.dead[at / 64] & (1 << (at % 64)) != 0
    }

    /// Marks the rows of resource `key` dead; returns how many were live.
    pub fn remove(&mut self, key: i64) -> usize {
        let start = self.keys.partition_point(|&k| k < key);
        let end = start + self.keys[start..].partition_point(|&k| k == key);
        let mut removed = 0;
        for at in start..end {
            if !self.is_dead(at) {
                if self.dead.is_empty() {
                    self.dead = vec![0; self.keys.len().div_ceil(64)];
                }
                self.dead[at / 64] |= 1 << (at % 64);
                self.dead_rows += 1;
                removed += 1;
            }
        }
        removed
    }

    /// The live rows: each with its resource key and its place among that resource's rows.
    pub fn rows(&self) -> impl Iterator<Item = (i64, usize, RowRef<'_>)> {
        let mut previous: Option<(i64, usize)> = None;
        (0..self.keys.len()).filter_map(move |at| {
            let key = self.keys[at];
            let place = match previous {
                Some((k, p)) if k == key => p + 1,
                _ => 0,
            };
            previous = Some((key, place));
            (!self.is_dead(at)).then_some((key, place, RowRef::Held { frame: self, at }))
        })
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.keys.capacity() * 8
            + self.columns.capacity() * std::mem::size_of::<Column>()
            + self
                .columns
                .iter()
                .map(|c| c.tags.capacity() + c.data.capacity() * 8)
                .sum::<usize>()
            + self.text.capacity()
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.dead.capacity() * 8
    }
}

/// Builds a `Frame` from rows given in ascending resource key.
pub struct FrameBuilder {
    frame: Frame,
    /// Text ids by their text, to store each distinct text once.
    seen: HashTable<u64>,
    hasher: std::hash::RandomState,
}

impl FrameBuilder {
    pub fn new(width: usize) -> FrameBuilder {
        FrameBuilder {
            frame: Frame {
                columns: (0..width).map(|_| Column::default()).collect(),
                ..Frame::default()
            },
            seen: HashTable::new(),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn intern(&mut self, s: &str) -> u64 {
        let hash = self.hasher.hash_one(s);
        let frame = &mut self.frame;
        if let Some(&id) = self.seen.find(hash, |&id| frame.text(id) == s) {
            return id;
        }
        frame.text.push_str(s);
        frame.ends.push(frame.text.len());
        let id = (frame.ends.len() - 1) as u64;
        let hasher = &self.hasher;
        self.seen.insert_unique(hash, id, |&id| hasher.hash_one(frame.text(id)));
        id
    }

    fn encode(&mut self, cell: CellRef<'_>) -> (Tag, u64) {
        match cell {
            CellRef::Null => (Tag::Null, 0),
            CellRef::Bool(false) => (Tag::False, 0),
            CellRef::Bool(true) => (Tag::True, 0),
            CellRef::Int(i) => (Tag::Int, i as u64),
            CellRef::Float(x) => (Tag::Float, x.to_bits()),
            CellRef::Number(t) => {
                if let Some(i) = canonical_int(t) {
                    (Tag::Int, i as u64)
                } else if let Some(x) = shortest_float(t) {
                    (Tag::Float, x.to_bits())
                } else {
                    (Tag::Number, self.intern(t))
                }
            }
            CellRef::Str(s) => (Tag::Str, self.intern(s)),
            CellRef::Json(t) => (Tag::Json, self.intern(t)),
            CellRef::Value(v) => (Tag::Json, self.intern(&v.to_string())),
        }
    }

    /// Appends one row of resource `key` (keys must not go down). A row narrower
    /// than the frame gets nulls; cells beyond its width are not kept.
    pub fn push(&mut self, key: i64, row: RowRef<'_>) {
        debug_assert!(
            self.frame.keys.last().is_none_or(|&k| k <= key),
            "rows out of key order"
        );
        self.frame.keys.push(key);
        for c in 0..self.frame.columns.len() {
            let (tag, data) = self.encode(row.get(c));
            let column = &mut self.frame.columns[c];
            column.tags.push(tag);
            column.data.push(data);
        }
    }

    /// The frame, holding no spare capacity.
    pub fn finish(self) -> Frame {
        let mut frame = self.frame;
        frame.keys.shrink_to_fit();
        for c in &mut frame.columns {
            c.tags.shrink_to_fit();
            c.data.shrink_to_fit();
        }
        frame.text.shrink_to_fit();
        frame.ends.shrink_to_fit();
        frame
    }
}

/// `t` as an `i64` when `t` is exactly how that integer is written.
fn canonical_int(t: &str) -> Option<i64> {
    let digits = t.strip_prefix('-').unwrap_or(t);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && t != "-0";
    canonical.then(|| t.parse().ok()).flatten()
}

/// `t` as an `f64` when serde_json writes that `f64` as exactly `t`.
fn shortest_float(t: &str) -> Option<f64> {
    let x: f64 = t.parse().ok()?;
    Number::from_f64(x).filter(|n| n.as_str() == t).map(|_| x)
}

/// A view's rows as resources change: a frame, and the rows of the resources
/// changed since it was built (empty when a resource has none now).
#[derive(Debug, Default)]
pub struct HeldRows {
    width: usize,
    base: Frame,
    changed: BTreeMap<i64, Vec<Row>>,
    changed_rows: usize,
    /// Times the changed rows were folded into a new frame.
    rebuilds: usize,
}

impl HeldRows {
    pub fn new(base: Frame, width: usize) -> HeldRows {
        HeldRows {
            width,
            base,
            changed: BTreeMap::new(),
            changed_rows: 0,
            rebuilds: 0,
        }
    }

    /// Columns per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Live rows.
    pub fn len(&self) -> usize {
        self.base.live() + self.changed_rows
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resource `key` now has `rows` (none when it was deleted or yields no row).
    pub fn replace(&mut self, key: i64, mut rows: Vec<Row>) {
        // Kept row-wise until the next rebuild: no spare capacity (a vector grown by
        // pushes holds up to twice what it needs).
        for r in &mut rows {
            r.shrink_to_fit();
        }
        rows.shrink_to_fit();
        self.base.remove(key);
        if let Some(old) = self.changed.remove(&key) {
            self.changed_rows -= old.len();
        }
        if !rows.is_empty() {
            self.changed_rows += rows.len();
            self.changed.insert(key, rows);
        }
        // Rebuilding costs a pass over the rows: do it once the changes are a
        // sixteenth of them, so that a question's pass over them stays cheap.
        let churn = self.changed_rows + self.base.dead_rows;
        if churn > 4096 && churn * 16 > self.base.len() {
            self.rebuild();
        }
    }

    /// Folds the changed rows into a new frame and drops the dead ones.
    pub fn rebuild(&mut self) {
        let mut builder = FrameBuilder::new(self.width);
        for (key, _, row) in self.rows() {
            builder.push(key, row);
        }
        self.base = builder.finish();
        self.changed.clear();
        self.changed_rows = 0;
        self.rebuilds += 1;
    }

    /// Every live row in ascending resource key, with its key and its place among
    /// that resource's rows.
    pub fn rows(&self) -> impl Iterator<Item = (i64, usize, RowRef<'_>)> {
        Merge {
            base: self.base.rows().peekable(),
            changed: self
                .changed
                .iter()
                .flat_map(|(k, rows)| plain_rows(*k, rows))
                .peekable(),
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        let value = std::mem::size_of::<Value>();
        let changed: usize = self
            .changed
            .values()
            .map(|rows| {
                // A B-tree entry: the key and the vector header, roughly.
                32 + rows.capacity() * std::mem::size_of::<Row>()
                    + rows
                        .iter()
                        .map(|r| r.capacity() * value + r.iter().map(value_heap).sum::<usize>())
                        .sum::<usize>()
            })
            .sum();
        self.base.heap_bytes() + changed
    }
}

/// Heap bytes a JSON value owns (beyond its own size).
fn value_heap(v: &Value) -> usize {
    match v {
        Value::String(s) => s.capacity(),
        Value::Number(n) => n.as_str().len(),
        Value::Array(a) => a.capacity() * std::mem::size_of::<Value>() + a.iter().map(value_heap).sum::<usize>(),
        // A map node per entry, roughly: the key, the value, two pointers.
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| k.capacity() + std::mem::size_of::<Value>() + 16 + value_heap(v))
            .sum(),
        Value::Null | Value::Bool(_) => 0,
    }
}

/// Two row streams in ascending key with no key in both, merged.
struct Merge<A: Iterator, B: Iterator> {
    base: std::iter::Peekable<A>,
    changed: std::iter::Peekable<B>,
}

impl<'a, A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = (i64, usize, RowRef<'a>)>,
    B: Iterator<Item = (i64, usize, RowRef<'a>)>,
{
    type Item = (i64, usize, RowRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        match (self.base.peek(), self.changed.peek()) {
            (Some(a), Some(b)) if b.0 < a.0 => self.changed.next(),
            (Some(_), _) => self.base.next(),
            (None, _) => self.changed.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    /// Values of every kind, numbers written in every way JSON allows.
    fn awkward() -> Vec<Value> {
        let numbers = [
            "0",
            "-0",
            "7",
            "-12",
            "1.0",
            "1.50",
            "7.2",
            "1e3",
            "1E-7",
            "2.5e+10",
            "-0.0",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "0.1",
            "100",
            "1.7976931348623157e308",
        ];
        let mut out: Vec<Value> = numbers.iter().map(|t| serde_json::from_str(t).expect(t)).collect();
        out.extend([
            Value::Null,
            json!(true),
            json!(false),
            json!(""),
            json!("F"),
            json!("1950s"),
            json!("Patient/8a9c"),
            json!("null"),
            json!("1"),
            json!("héllo ✓"),
            json!([1, "a", null]),
            json!({"b": 1, "a": [2]}),
            json!([]),
        ]);
        out
    }

    #[test]
    fn every_value_comes_back_exactly() {
        let values = awkward();
        let mut b = FrameBuilder::new(values.len());
        b.push(1, RowRef::Plain(&values));
        // A second row in reverse shares the texts of the first.
        let reversed: Vec<Value> = values.iter().rev().cloned().collect();
        b.push(1, RowRef::Plain(&reversed));
        let frame = b.finish();
        let rows: Vec<_> = frame.rows().collect();
        assert_eq!(rows.len(), 2);
        for (row, expected) in rows.iter().zip([&values, &reversed]) {
            for (c, v) in expected.iter().enumerate() {
                let cell = row.2.get(c);
                assert_eq!(cell.to_value(), *v, "column {c}");
                // The text a group key is made of, and the number a measure reads, are those of the value.
                assert_eq!(cell.text(), CellRef::of(v).text(), "column {c}");
                assert_eq!(cell.number(), CellRef::of(v).number(), "column {c}");
                if let Value::Number(n) = v {
                    assert_eq!(cell.number_text().as_deref(), Some(n.as_str()));
                    assert_eq!(cell.number(), n.as_f64().filter(|x| x.is_finite()));
                }
            }
        }
        // Each distinct text is held once.
        let texts = frame.text.len();
        let mut single = FrameBuilder::new(values.len());
        single.push(1, RowRef::Plain(&values));
        assert_eq!(single.finish().text.len(), texts);
    }

    #[test]
    fn integers_and_shortest_floats_are_held_without_their_text() {
        let mut b = FrameBuilder::new(4);
        let row = [
            json!(42),
            json!(-3),
            serde_json::from_str::<Value>("7.2").unwrap(),
            serde_json::from_str("7.20").unwrap(),
        ];
        b.push(5, RowRef::Plain(&row));
        let f = b.finish();
        assert_eq!(
            f.text, "7.20",
            "only the number that is not its f64's shortest form keeps its text"
        );
        assert_eq!(f.cell(0, 0), CellRef::Int(42));
        assert_eq!(f.cell(0, 2), CellRef::Float(7.2));
        assert_eq!(f.cell(0, 3), CellRef::Number("7.20"));
    }

    fn rows_of(key: i64, n: usize, round: usize) -> Vec<Row> {
        (0..n)
            .map(|i| {
                vec![
                    json!(format!("Patient/{}", key % 37)),
                    if (key as usize + i + round).is_multiple_of(5) {
                        Value::Null
                    } else {
                        json!(["F", "M"][i % 2])
                    },
                    json!(key * 10 + i as i64 + round as i64),
                    serde_json::from_str(&format!("{}.{}0", key, round)).unwrap(),
                ]
            })
            .collect()
    }

    fn listed(held: &HeldRows) -> Vec<(i64, usize, Vec<Value>)> {
        held.rows()
            .map(|(k, i, r)| (k, i, (0..4).map(|c| r.get(c).to_value()).collect()))
            .collect()
    }

    fn expected(truth: &HashMap<i64, Vec<Row>>) -> Vec<(i64, usize, Vec<Value>)> {
        let mut keys: Vec<_> = truth.keys().copied().collect();
        keys.sort();
        keys.into_iter()
            .flat_map(|k| truth[&k].iter().enumerate().map(move |(i, r)| (k, i, r.clone())))
            .collect()
    }

    #[test]
    fn held_rows_follow_every_change_through_rebuilds() {
        // A pseudo-random sequence of inserts, updates to more or fewer rows, and deletes,
        // checked against plain rows after each step; enough of them to rebuild several times.
        let mut truth: HashMap<i64, Vec<Row>> = HashMap::new();
        let mut builder = FrameBuilder::new(4);
        for key in (0..3000).step_by(2) {
            let rows = rows_of(key, (key % 4) as usize, 0);
            for r in &rows {
                builder.push(key, RowRef::Plain(r));
            }
            if !rows.is_empty() {
                truth.insert(key, rows);
            }
        }
        let mut held = HeldRows::new(builder.finish(), 4);
        assert_eq!(listed(&held), expected(&truth));
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 1..12_000usize {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let key = (state % 4000) as i64;
            let rows = if state.is_multiple_of(7) {
                vec![]
            } else {
                rows_of(key, (state / 7 % 4) as usize, round)
            };
            held.replace(key, rows.clone());
            if rows.is_empty() {
                truth.remove(&key);
            } else {
                truth.insert(key, rows);
            }
            if round % 997 == 0 {
                assert_eq!(listed(&held), expected(&truth), "after {round} changes");
                assert_eq!(held.len(), truth.values().map(Vec::len).sum::<usize>());
            }
        }
        assert!(held.rebuilds >= 2, "the changes were folded in {} times", held.rebuilds);
        assert_eq!(listed(&held), expected(&truth));
        held.rebuild();
        assert_eq!(held.base.dead_rows, 0);
        assert_eq!(listed(&held), expected(&truth));
    }

    #[test]
    fn held_rows_take_a_fraction_of_plain_rows() {
        // Rows shaped like the demographics view: a distinct key text, low-cardinality codes, a boolean.
        let rows: Vec<Row> = (0..20_000)
            .map(|i| {
                vec![
                    json!(format!("Patient/{i:08x}-0000-4000-8000-000000000000")),
                    json!(["female", "male", "unknown"][i % 3]),
                    json!(format!("{}0s", 192 + i % 9)),
                    json!(i % 11 == 0),
                ]
            })
            .collect();
        let mut b = FrameBuilder::new(4);
        let plain: usize = rows
            .iter()
            .map(|r| {
                std::mem::size_of::<Row>()
                    + r.capacity() * std::mem::size_of::<Value>()
                    + r.iter().map(value_heap).sum::<usize>()
            })
            .sum();
        for (i, r) in rows.iter().enumerate() {
            b.push(i as i64, RowRef::Plain(r));
        }
        let held = HeldRows::new(b.finish(), 4);
        assert!(
            held.heap_bytes() * 3 < plain,
            "{} held against {plain} plain",
            held.heap_bytes()
        );
    }
}
