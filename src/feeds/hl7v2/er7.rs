//! HL7 v2 ER7 ("pipe and hat") parsing: messages into segments and fields,
//! fields into repetitions, components and subcomponents, and escape decoding.
//!
//! Zero-copy and lazy: a parsed message borrows the text and splits a field
//! only when asked. Tolerant of what real feeds send: CR, LF or CRLF between
//! segments, a UTF-8 byte-order mark, MLLP framing bytes left in a file, and
//! encoding characters other than `^~\&` (taken from MSH-1 and MSH-2).
//!
//! Why not a crate: `hl7-parser` 0.3 and `hl7kit` 0.2 both parse every message
//! of the shared corpora, but at 5,900 and 6,200 messages/s on this machine
//! (163 corpus messages x 20, release build), against a translation goal of
//! 20,000 messages/s for the whole pipeline.

use std::borrow::Cow;
use std::fmt;

/// The five encoding characters of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: Option<char>,
    pub subcomponent: Option<char>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: Some('\\'),
            subcomponent: Some('&'),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    /// 1-based segment number the problem is in, when there is one.
    pub segment: Option<usize>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.segment {
            Some(n) => write!(f, "{} (segment {n})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ParseError {}

fn error(message: impl Into<String>, segment: Option<usize>) -> ParseError {
    ParseError {
        message: message.into(),
        segment,
    }
}

/// One segment: its name and its raw fields, numbered as the standard numbers
/// them (for MSH, field 1 is the field separator itself and field 2 the
/// encoding characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment<'a> {
    pub name: &'a str,
    fields: Vec<&'a str>,
}

impl<'a> Segment<'a> {
    /// Raw field `n` (1-based), or "" when absent.
    pub fn field(&self, n: usize) -> &'a str {
        self.fields.get(n).copied().unwrap_or("")
    }

    /// The number of the last field present.
    pub fn field_count(&self) -> usize {
        self.fields.len().saturating_sub(1)
    }
}

/// Part `n` (0-based) of `raw` split at `delim`, or "" when there are fewer parts.
/// Delimiters are ASCII in every feed seen (a byte loop over short fields is several
/// times cheaper than `str::split`'s searcher, which was 16% of translation); any
/// other character takes the general path.
fn nth_part(raw: &str, delim: char, n: usize) -> &str {
    if !delim.is_ascii() {
        return raw.split(delim).nth(n).unwrap_or("");
    }
    let d = delim as u8;
    let (mut start, mut index) = (0, 0);
    for (i, &b) in raw.as_bytes().iter().enumerate() {
        if b == d {
            if index == n {
                // An ASCII byte is always a character boundary.
                return &raw[start..i];
            }
            index += 1;
            start = i + 1;
        }
    }
    if index == n {
        &raw[start..]
    } else {
        ""
    }
}

/// Calls `each` with every part of `raw` split at `delim`, as `str::split` gives them.
fn parts<'a>(raw: &'a str, delim: char, mut each: impl FnMut(&'a str)) {
    if !delim.is_ascii() {
        raw.split(delim).for_each(each);
        return;
    }
    let d = delim as u8;
    let mut start = 0;
    for (i, &b) in raw.as_bytes().iter().enumerate() {
        if b == d {
            each(&raw[start..i]);
            start = i + 1;
        }
    }
    each(&raw[start..]);
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub delimiters: Delimiters,
    pub segments: Vec<Segment<'a>>,
}

/// Strips what transports and editors leave around a message.
pub fn trim_envelope(text: &str) -> &str {
    text.trim_start_matches('\u{feff}')
        .trim_matches(|c: char| c == '\u{0b}' || c == '\u{1c}' || c.is_whitespace())
}

/// Parses one message. Segments may be separated by CR, LF or CRLF; empty
/// lines are skipped.
pub fn parse(text: &str) -> Result<Message<'_>, ParseError> {
    let text = trim_envelope(text);
    if !text.starts_with("MSH") {
        return Err(error("a message must start with an MSH segment", Some(1)));
    }
    let mut chars = text[3..].chars();
    let field = chars
        .next()
        .ok_or_else(|| error("MSH has no field separator", Some(1)))?;
    let mut encoding: String = chars.take_while(|c| *c != field).collect();
    if encoding.chars().count() > 4 {
        // Seen in real feeds: `^~\\&`, the escape character doubled by a tool
        // that escaped it once too often. Collapse repeated characters.
        let mut collapsed = String::new();
        for c in encoding.chars() {
            if !collapsed.ends_with(c) {
                collapsed.push(c);
            }
        }
        encoding = collapsed;
    }
    let mut enc = encoding.chars();
    let component = enc
        .next()
        .ok_or_else(|| error("MSH-2 has no encoding characters", Some(1)))?;
    let repetition = enc
        .next()
        .ok_or_else(|| error("MSH-2 lacks the repetition separator", Some(1)))?;
    let escape = enc.next();
    let subcomponent = enc.next();
    let delimiters = Delimiters {
        field,
        component,
        repetition,
        escape,
        subcomponent,
    };
    let mut all = vec![field, component, repetition];
    all.extend(escape);
    all.extend(subcomponent);
    for (i, c) in all.iter().enumerate() {
        if c.is_alphanumeric() || *c == '\r' || *c == '\n' || all[..i].contains(c) {
            return Err(error(
                format!("MSH-1/MSH-2 encoding characters {all:?} must be distinct punctuation"),
                Some(1),
            ));
        }
    }
    let mut segments = Vec::new();
    for (i, line) in text.split(['\r', '\n']).enumerate().filter(|(_, l)| !l.is_empty()) {
        let mut fields: Vec<&str> = Vec::with_capacity(32);
        parts(line, field, |f| fields.push(f));
        let name = fields[0];
        if name.len() != 3 || !name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
            return Err(error(
                format!("'{}' is not a segment name", name.chars().take(10).collect::<String>()),
                Some(i + 1),
            ));
        }
        if name == "MSH" {
            // MSH-1 is the separator itself: shift so that fields[n] is MSH-n.
            let sep = line
                .get(3..3 + field.len_utf8())
                .ok_or_else(|| error("MSH has no field separator", Some(i + 1)))?;
            fields.insert(1, sep);
        }
        segments.push(Segment { name, fields });
    }
    Ok(Message { delimiters, segments })
}

impl<'a> Message<'a> {
    pub fn segment(&self, name: &str) -> Option<&Segment<'a>> {
        self.segments.iter().find(|s| s.name == name)
    }

    pub fn all(&self, name: &'a str) -> impl Iterator<Item = &Segment<'a>> + '_ {
        self.segments.iter().filter(move |s| s.name == name)
    }

    /// Repetitions of a raw field.
    pub fn repetitions(&self, raw: &'a str) -> impl Iterator<Item = &'a str> {
        raw.split(self.delimiters.repetition)
    }

    /// Component `n` (1-based) of a raw repetition, or "".
    pub fn component(&self, raw: &'a str, n: usize) -> &'a str {
        nth_part(raw, self.delimiters.component, n.saturating_sub(1))
    }

    /// Subcomponent `n` (1-based) of a raw component, or "".
    pub fn subcomponent(&self, raw: &'a str, n: usize) -> &'a str {
        match self.delimiters.subcomponent {
            Some(s) => nth_part(raw, s, n.saturating_sub(1)),
            None if n == 1 => raw,
            None => "",
        }
    }

    /// Value at `SEG-f[.c[.s]]` in the first repetition of the first such
    /// segment, unescaped; "" when absent. For example `PID-5.1` or `MSH-9.2`.
    pub fn get(&self, path: &str) -> Cow<'a, str> {
        let Some((seg, rest)) = path.split_once('-') else {
            return Cow::Borrowed("");
        };
        let mut parts = rest.split('.').map(|p| p.parse::<usize>().unwrap_or(0));
        let (f, c, s) = (parts.next().unwrap_or(0), parts.next(), parts.next());
        let Some(segment) = self.segment(seg) else {
            return Cow::Borrowed("");
        };
        let field = segment.field(f);
        if seg == "MSH" && f <= 2 {
            return Cow::Borrowed(field);
        }
        let rep = self.repetitions(field).next().unwrap_or("");
        let value = match (c, s) {
            (None, _) => rep,
            (Some(c), None) => self.component(rep, c),
            (Some(c), Some(s)) => self.subcomponent(self.component(rep, c), s),
        };
        self.unescape(value)
    }

    /// Decodes escape sequences: `\F\ \S\ \T\ \R\ \E\`, `\Xhh..\` (hex bytes
    /// as UTF-8) and `\.br\` (a line break). Formatting and unknown sequences
    /// are kept as written, so nothing is silently lost.
    pub fn unescape(&self, raw: &'a str) -> Cow<'a, str> {
        let Some(esc) = self.delimiters.escape else {
            return Cow::Borrowed(raw);
        };
        if !raw.contains(esc) {
            return Cow::Borrowed(raw);
        }
        let d = self.delimiters;
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(start) = rest.find(esc) {
            out.push_str(&rest[..start]);
            let after = &rest[start + esc.len_utf8()..];
            let Some(end) = after.find(esc) else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let seq = &after[..end];
            let decoded: Option<Cow<str>> = match seq {
                "F" => Some(Cow::Owned(d.field.to_string())),
                "S" => Some(Cow::Owned(d.component.to_string())),
                "R" => Some(Cow::Owned(d.repetition.to_string())),
                "E" => Some(Cow::Owned(esc.to_string())),
                "T" => d.subcomponent.map(|c| Cow::Owned(c.to_string())),
                ".br" => Some(Cow::Borrowed("\n")),
                _ if seq.len() > 1
                    && seq.starts_with('X')
                    && (seq.len() - 1).is_multiple_of(2)
                    && seq[1..].bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    let bytes: Option<Vec<u8>> = (1..seq.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&seq[i..i + 2], 16).ok())
                        .collect();
                    bytes.map(|b| Cow::Owned(String::from_utf8_lossy(&b).into_owned()))
                }
                _ => None,
            };
            match decoded {
                Some(s) => out.push_str(&s),
                None => {
                    out.push(esc);
                    out.push_str(seq);
                    out.push(esc);
                }
            }
            rest = &after[end + esc.len_utf8()..];
        }
        out.push_str(rest);
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_as_str_split_does() {
        let cases = ["", "a", "^", "a^b", "^a^^b^", "é^ü^", "x^^", "€ and ^ more"];
        for raw in cases {
            for delim in ['^', '€'] {
                let split: Vec<&str> = raw.split(delim).collect();
                let mut got = Vec::new();
                parts(raw, delim, |p| got.push(p));
                assert_eq!(got, split, "{raw:?} at {delim:?}");
                for n in 0..split.len() + 2 {
                    assert_eq!(
                        nth_part(raw, delim, n),
                        split.get(n).copied().unwrap_or(""),
                        "{raw:?} {n}"
                    );
                }
            }
        }
    }

    const ADT: &str = "MSH|^~\\&|PAS|RTD|PENNINE|NENC|20230704101500||ADT^A01^ADT_A01|MSG00001|P|2.5\r\
        EVN|A01|20230704101500\r\
        PID|1||9434765919^^^NHS^NH~RTD123^^^RTD^MR||Smith\\S\\Jones^Ann^^^Mrs||19700517|F\r\
        NTE|1||Line one\\.br\\Line two \\T\\ more \\X48656C6C6F\\ \\H\\bold\\N\\\r";

    #[test]
    fn splits_fields_components_and_repetitions() {
        let m = parse(ADT).unwrap();
        assert_eq!(m.segments.len(), 4);
        assert_eq!(m.get("MSH-1"), "|");
        assert_eq!(m.get("MSH-2"), "^~\\&");
        assert_eq!(m.get("MSH-9.1"), "ADT");
        assert_eq!(m.get("MSH-9.2"), "A01");
        assert_eq!(m.get("MSH-10"), "MSG00001");
        let pid = m.segment("PID").unwrap();
        let ids: Vec<&str> = m.repetitions(pid.field(3)).collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(m.component(ids[1], 5), "MR");
        assert_eq!(m.get("PID-5.1"), "Smith^Jones");
        assert_eq!(m.get("PID-7"), "19700517");
        assert_eq!(m.get("PID-99.3"), "");
        assert_eq!(m.get("ZZZ-1"), "");
    }

    #[test]
    fn decodes_escapes_and_keeps_formatting_sequences() {
        let m = parse(ADT).unwrap();
        assert_eq!(m.get("NTE-3"), "Line one\nLine two & more Hello \\H\\bold\\N\\");
        // A malformed hex escape is kept as written (and multi-byte text never splits).
        assert_eq!(m.unescape("a\\Xaé1\\b"), "a\\Xaé1\\b");
    }

    #[test]
    fn tolerates_line_endings_bom_mllp_bytes_and_custom_delimiters() {
        let lf = ADT.replace('\r', "\n");
        let crlf = ADT.replace('\r', "\r\n");
        let framed = format!("\u{feff}\u{0b}{ADT}\u{1c}\r");
        for t in [lf.as_str(), crlf.as_str(), framed.as_str()] {
            assert_eq!(parse(t).unwrap(), parse(ADT).unwrap());
        }
        let doubled = parse("MSH|^~\\\\&|SE050\rPID|1||1^^^A\\T\\B").unwrap();
        assert_eq!(doubled.delimiters, Delimiters::default());
        assert_eq!(doubled.get("PID-3.4"), "A&B");
        let custom = "MSH#:*!@#PAS#RTD\rPID#1##42:::NHS:NH*43#";
        let m = parse(custom).unwrap();
        assert_eq!(m.delimiters.field, '#');
        assert_eq!(m.get("PID-3.4"), "NHS");
        assert_eq!(m.repetitions(m.segment("PID").unwrap().field(3)).count(), 2);
    }

    #[test]
    fn rejects_what_is_not_a_message() {
        for bad in [
            "",
            "PID|1",
            "MSH",
            "MSH|",
            "MSH|^",
            "MSH|^^\\&|",
            "MSH|^~\\&|\rpid|1",
            "MSH|A~\\&|",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: every prefix and mutation of a real
        // message, plus pseudo-random strings over the delimiter alphabet.
        let alphabet: Vec<char> = "MSHPID|^~\\&\r\n0123456789XF.bT".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400 {
            let mut s = String::from("MSH");
            for _ in 0..len % 60 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            if let Ok(m) = parse(&s) {
                for seg in &m.segments {
                    for f in 0..=seg.field_count() {
                        let _ = m.unescape(seg.field(f));
                    }
                }
                let _ = m.get("PID-5.1.2");
            }
        }
        for cut in 0..ADT.len() {
            if ADT.is_char_boundary(cut) {
                let _ = parse(&ADT[..cut]);
            }
        }
    }

    #[test]
    fn every_corpus_message_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora");
        if !root.exists() {
            println!("SKIPPED: {} is missing", root.display());
            return;
        }
        let mut n = 0;
        for dir in ["fhir-converter-hl7v2/input", "lfh-hl7v2-fhir-converter"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "hl7") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    let m = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                    assert!(!m.get("MSH-9.1").is_empty(), "{}: no message type", p.display());
                    n += 1;
                }
            }
        }
        assert!(n >= 140, "only {n} messages found");
        println!("parsed {n} corpus messages");
    }
}
