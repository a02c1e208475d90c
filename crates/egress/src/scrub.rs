//! Scrubbing: no form of the credential leaves in a vendor's answer.
//!
//! Vendors echo requests (debug endpoints, error pages, reflected headers,
//! redirect URLs). Before a response goes back to the caller, every
//! occurrence of the secret in one of these forms is replaced with
//! `[REDACTED]` in header values and the body (and a header named after it
//! is dropped):
//!
//! - **raw** — the secret's bytes; for basic auth also the password alone.
//! - **Base64**, standard and URL-safe alphabets, padded or not, **at each of
//!   the three alignments**: the secret inside a larger Base64'd plaintext
//!   (`base64("Bearer " + token)`, a JSON object holding it). For alignment
//!   `k` the bytes of the secret from offset `k`, cut to whole 3-byte groups,
//!   encode to a fixed run of characters that appears whenever the secret
//!   sits at that alignment; that run is matched, and the up to 3
//!   characters on each side that still carry bits of the secret's edge
//!   bytes are redacted with it (and the padding, where the secret ends the
//!   encoded text).
//! - **hex** of the secret, upper, lower or mixed case.
//!
//! Each of those is also found through **up to three rounds of decoding**
//! ([`MAX_DECODES`]), each round undoing percent-encoding (`%XX`, either
//! case, any subset of the bytes: full, partial as a query sends it, or
//! double-encoded `%25XX`) and JSON string escapes (`\uXXXX` of any
//! character, either case, surrogate pairs, `\"`, `\\`, `\/`, `\b`, `\f`,
//! `\n`, `\r`, `\t`), and with `+` read as a space (form encoding). What is
//! matched is mapped back to the bytes of the original text, and those are
//! replaced.
//!
//! [`Scrubber::answer`] applies it to a vendor's answer as it goes back to
//! the caller: the body, every header value (a header named after the
//! secret goes whole), and with the hop-by-hop headers dropped and
//! `content-length` corrected.
//!
//! Not covered: other encodings (Base32, compressed or encrypted data,
//! Base64 of an already-escaped form), and a secret split across header
//! values. A body in a content coding is refused before it gets here.
//!
//! The [`Scrubber`] is built once per call, from the leased secret, so it
//! must cost little to build: each form is kept as it is, with one table
//! saying which forms end with each byte. A single pass over the text and
//! every decoding round at once compares a form (backwards) only where the
//! text has a byte that ends it; bytes that end no form are skipped
//! quickly, and the decoding rounds start only at the first escape (`%` or
//! `\`), so text without one is read once. (An Aho-Corasick automaton
//! scans in strictly linear time, but building its states and failure links
//! for every call cost more than the scans it saved: the forms are few and
//! rarely share a prefix.) A compare stops at the first byte that differs,
//! so the work per byte stays small unless the text repeats long stretches
//! of a form that itself repeats (a secret like `aaaa…`); even then it is
//! bounded by the forms' total length per byte, and the response size
//! limit bounds the text. The forms and the table are the secret in
//! another shape, so they are zeroed on drop.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::HeaderMap;
use std::collections::VecDeque;
use valet_credentials::Secret;
use zeroize::Zeroizing;

/// What replaces a credential.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// How many rounds of percent and JSON decoding are looked through.
pub const MAX_DECODES: usize = 3;

/// The forms of one secret to remove. Zeroed on drop: they are the secret.
pub struct Scrubber {
    forms: Forms,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} forms)", self.forms.forms.len())
    }
}

/// One form to match: its length, and how many units around a match to
/// redact with it (Base64 characters that carry part of the secret).
#[derive(Debug, Clone, Copy)]
struct Needle {
    len: usize,
    before: usize,
    after: usize,
}

impl Scrubber {
    /// The forms of `secret`; `basic` adds the password of `user:password`.
    pub fn new(secret: &Secret, basic: bool) -> Self {
        Self::with_others(secret, basic, &[])
    }

    /// A scrubber for `secret` and for each of `others` (secrets the
    /// answer must not echo though they were not injected, such as an OAuth
    /// client secret), in every form.
    pub fn with_others(secret: &Secret, basic: bool, others: &[Secret]) -> Self {
        let raw = secret.expose();
        let mut bases: Vec<&[u8]> = vec![raw];
        if basic && let Some(i) = raw.iter().position(|b| *b == b':') {
            bases.push(&raw[i + 1..]);
        }
        bases.extend(others.iter().map(Secret::expose));
        let mut forms = FormsBuilder::default();
        for base in bases {
            forms.add(Compare::Exact, plus_as_space(base.to_vec()), 0, 0);
            for start in 0..3.min(base.len()) {
                let whole = (base.len() - start) / 3 * 3;
                if whole == 0 {
                    continue;
                }
                let core = &base[start..start + whole];
                // Characters of the neighbouring groups that also carry bits
                // of the secret: 1 byte of it shares a group's last 2
                // characters, 2 bytes its last 3 (and the same at the end).
                let before = [0, 2, 3][start];
                let after = [0, 2, 3][(base.len() - start) % 3];
                for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                    let text = engine.encode(core).into_bytes();
                    forms.add(Compare::Exact, plus_as_space(text), before, after);
                }
                // Where the secret ends the encoded text, its last group and
                // the padding are fixed too: the whole tail goes.
                if after > 0 {
                    for engine in [&STANDARD, &URL_SAFE] {
                        let text = engine.encode(&base[start..]).into_bytes();
                        forms.add(Compare::Exact, plus_as_space(text), before, 0);
                    }
                }
            }
            let mut h = Vec::with_capacity(base.len() * 2);
            for b in base {
                h.push(HEX[usize::from(b >> 4)]);
                h.push(HEX[usize::from(b & 15)]);
            }
            forms.add(Compare::Hex, Zeroizing::new(h), 0, 0);
        }
        Self { forms: forms.build() }
    }

    /// `bytes` with every form replaced; `None` when nothing was found.
    pub fn scrub(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        if self.forms.forms.is_empty() {
            return None;
        }
        let mut spans = Vec::new();
        let len = bytes.len();
        // The decoding rounds start at the first escape: up to there, every
        // round's text is this one. They are fed in chunks.
        let mut rounds: Option<Rounds<'_>> = None;
        let mut chunk: Vec<Unit> = Vec::new();
        let unit = |i: usize| Unit {
            byte: bytes[i],
            start: i,
            end: i + 1,
        };
        let mut i = 0;
        while i < len {
            // Skip what ends no form (and, before the rounds start, is no
            // escape).
            let from = i;
            while i < len
                && i - from < CHUNK
                && !self.forms.may_end(bytes[i])
                && (rounds.is_some() || !is_escape(bytes[i]))
            {
                i += 1;
            }
            if let Some(rounds) = rounds.as_mut() {
                chunk.extend((from..i).map(unit));
                if chunk.len() >= CHUNK {
                    rounds.feed(0, &chunk, &mut spans, false);
                    chunk.clear();
                }
            }
            if i - from == CHUNK {
                continue;
            }
            if i == len {
                break;
            }
            let byte = bytes[i];
            if rounds.is_none() && is_escape(byte) {
                rounds = Some(Rounds::start(self, &bytes[..i]));
            }
            if let Some(rounds) = rounds.as_mut() {
                chunk.push(unit(i));
                if chunk.len() >= CHUNK {
                    rounds.feed(0, &chunk, &mut spans, false);
                    chunk.clear();
                }
            }
            self.forms.ending_at(
                byte,
                i + 1,
                |k| bytes[i - k],
                |n| {
                    spans.push((
                        (i + 1).saturating_sub(n.len + n.before),
                        (i + 1 + n.after).min(len),
                    ));
                },
            );
            i += 1;
        }
        if let Some(rounds) = rounds.as_mut() {
            rounds.feed(0, &chunk, &mut spans, true);
        }
        if spans.is_empty() {
            return None;
        }
        // Overlapping or touching matches become one redaction.
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut last = 0;
        for (start, end) in merged {
            out.extend_from_slice(&bytes[last..start]);
            out.extend_from_slice(REDACTED);
            last = end;
        }
        out.extend_from_slice(&bytes[last..]);
        Some(out)
    }

    /// A vendor's answer as the caller may see it: the body scrubbed, and
    /// the headers filtered for the caller (`answer_headers`).
    pub fn answer(&self, headers: &HeaderMap, body: Bytes) -> (Vec<(String, String)>, Bytes) {
        let (body, new_len) = match self.scrub(&body) {
            Some(scrubbed) => {
                let len = scrubbed.len();
                (Bytes::from(scrubbed), Some(len))
            }
            None => (body, None),
        };
        (answer_headers(headers, self, new_len), body)
    }
}

/// The vendor's headers for the caller: hop-by-hop headers dropped (the
/// fixed list and any the vendor names in `Connection`), every value
/// scrubbed, a header named after the credential dropped, and
/// `content-length` corrected when scrubbing changed the body.
fn answer_headers(headers: &HeaderMap, scrubber: &Scrubber, new_len: Option<usize>) -> Vec<(String, String)> {
    let named_by_connection: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    headers
        .iter()
        .filter(|(name, _)| {
            !crate::request::HOP_BY_HOP.contains(&name.as_str())
                && !named_by_connection.iter().any(|n| n == name.as_str())
                && scrubber.scrub(name.as_str().as_bytes()).is_none()
        })
        .map(|(name, value)| {
            let bytes = match new_len {
                Some(len) if name == http::header::CONTENT_LENGTH => len.to_string().into_bytes(),
                _ => scrubber
                    .scrub(value.as_bytes())
                    .unwrap_or_else(|| value.as_bytes().to_vec()),
            };
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        })
        .collect()
}

/// Units handed to the decoding rounds at a time.
const CHUNK: usize = 4096;

fn is_escape(b: u8) -> bool {
    b == b'%' || b == b'\\'
}

/// The decoding rounds over one text, streamed: stage `k` decodes round
/// `k + 1` from round `k` (round 0 is the text) and matches in it. A round
/// is started only when the one before it holds an escape (`%` or `\`);
/// until then the two are the same text.
struct Rounds<'a> {
    stages: Vec<Stage<'a>>,
}

struct Stage<'a> {
    decoder: Decoder,
    matcher: LayerMatcher<'a>,
    /// Reused buffer for the decoder's output.
    out: Vec<Unit>,
}

impl<'a> Rounds<'a> {
    /// Round 1, starting at the first escape; `before` is the text before
    /// it, which round 1 shares. Its matcher resumes from the last bytes of
    /// `before` (an automaton state depends only on them); what it finds
    /// there the text's own pass has found already.
    fn start(scrubber: &'a Scrubber, before: &[u8]) -> Self {
        let mut matcher = LayerMatcher::new(scrubber);
        let from = before.len().saturating_sub(matcher.replay);
        let mut again = Vec::new();
        for (i, &byte) in before.iter().enumerate().skip(from) {
            let unit = Unit {
                byte,
                start: i,
                end: i + 1,
            };
            matcher.push(unit, &mut again);
        }
        Self {
            stages: vec![Stage {
                decoder: Decoder::default(),
                matcher,
                out: Vec::new(),
            }],
        }
    }

    /// Feeds `units` of round `k` to stage `k` (and on, through every
    /// started round); with `end`, flushes them all.
    fn feed(&mut self, k: usize, units: &[Unit], spans: &mut Vec<(usize, usize)>, end: bool) {
        let mut out = std::mem::take(&mut self.stages[k].out);
        out.clear();
        for &unit in units {
            self.stages[k].decoder.push(unit, &mut out);
        }
        if end {
            self.stages[k].decoder.finish(&mut out);
        }
        // Where the next round's units begin in `out`.
        let mut next = (self.stages.len() > k + 1).then_some(0);
        for (at, &unit) in out.iter().enumerate() {
            if next.is_none() && k + 1 < MAX_DECODES && is_escape(unit.byte) {
                // The next round has been this one's text so far.
                let matcher = self.stages[k].matcher.clone();
                self.stages.push(Stage {
                    decoder: Decoder::default(),
                    matcher,
                    out: Vec::new(),
                });
                next = Some(at);
            }
            self.stages[k].matcher.push(unit, spans);
        }
        if let Some(from) = next {
            self.feed(k + 1, &out[from..], spans, end);
        }
        if end {
            self.stages[k].matcher.finish(spans);
        }
        self.stages[k].out = out;
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `bytes` with every `+` read as a space (form encoding), in place.
fn plus_as_space(mut bytes: Vec<u8>) -> Zeroizing<Vec<u8>> {
    for b in &mut bytes {
        if *b == b'+' {
            *b = b' ';
        }
    }
    Zeroizing::new(bytes)
}

/// One byte of a decoded layer, and the bytes of the original text it came
/// from.
#[derive(Debug, Clone, Copy)]
struct Unit {
    byte: u8,
    start: usize,
    end: usize,
}

/// One round of percent and JSON-escape decoding, fed a unit at a time. It
/// holds back at most 12 units (`\uD83D\uDE00`).
#[derive(Default)]
struct Decoder {
    pending: VecDeque<Unit>,
}

/// The value of an ASCII hex digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Decoder {
    fn push(&mut self, unit: Unit, out: &mut Vec<Unit>) {
        if self.pending.is_empty() && unit.byte != b'%' && unit.byte != b'\\' {
            out.push(unit);
            return;
        }
        self.pending.push_back(unit);
        self.drain(false, out);
    }

    fn finish(&mut self, out: &mut Vec<Unit>) {
        self.drain(true, out);
    }

    fn byte(&self, i: usize) -> Option<u8> {
        self.pending.get(i).map(|u| u.byte)
    }

    /// `\uXXXX` at `at`: its code unit, or `None` (not one, or not yet
    /// complete — see `wait`).
    fn escape_u(&self, at: usize) -> Option<u16> {
        if self.byte(at)? != b'\\' || self.byte(at + 1)? != b'u' {
            return None;
        }
        let mut v = 0u16;
        for i in 0..4 {
            v = v << 4 | u16::from(hex_value(self.byte(at + 2 + i)?)?);
        }
        Some(v)
    }

    /// Emits `bytes` for the first `n` pending units.
    fn emit(&mut self, n: usize, bytes: &[u8], out: &mut Vec<Unit>) {
        let start = self.pending[0].start;
        let end = self.pending[n - 1].end;
        for &byte in bytes {
            out.push(Unit { byte, start, end });
        }
        self.pending.drain(..n);
    }

    fn drain(&mut self, end: bool, out: &mut Vec<Unit>) {
        // Whether `n` units are known (or none will come).
        let have = |d: &Self, n: usize| end || d.pending.len() >= n;
        while let Some(first) = self.byte(0) {
            match first {
                b'%' => {
                    if !have(self, 3) {
                        return;
                    }
                    match (self.byte(1).and_then(hex_value), self.byte(2).and_then(hex_value)) {
                        (Some(h), Some(l)) => self.emit(3, &[h << 4 | l], out),
                        _ => self.emit(1, &[first], out),
                    }
                }
                b'\\' => {
                    if !have(self, 2) {
                        return;
                    }
                    let simple = match self.byte(1) {
                        Some(b'"') => Some(b'"'),
                        Some(b'\\') => Some(b'\\'),
                        Some(b'/') => Some(b'/'),
                        Some(b'b') => Some(8),
                        Some(b'f') => Some(12),
                        Some(b'n') => Some(b'\n'),
                        Some(b'r') => Some(b'\r'),
                        Some(b't') => Some(b'\t'),
                        _ => None,
                    };
                    if let Some(b) = simple {
                        self.emit(2, &[b], out);
                        continue;
                    }
                    if self.byte(1) != Some(b'u') {
                        self.emit(1, &[first], out);
                        continue;
                    }
                    if !have(self, 6) {
                        return;
                    }
                    let Some(unit) = self.escape_u(0) else {
                        self.emit(1, &[first], out);
                        continue;
                    };
                    let (c, used) = match unit {
                        0xD800..=0xDBFF => {
                            if !have(self, 12) {
                                return;
                            }
                            match self.escape_u(6) {
                                Some(low @ 0xDC00..=0xDFFF) => {
                                    let c = 0x10000
                                        + ((u32::from(unit) - 0xD800) << 10)
                                        + (u32::from(low) - 0xDC00);
                                    (char::from_u32(c), 12)
                                }
                                _ => (None, 6),
                            }
                        }
                        0xDC00..=0xDFFF => (None, 6),
                        bmp => (char::from_u32(u32::from(bmp)), 6),
                    };
                    match c {
                        Some(c) => {
                            let mut buf = [0u8; 4];
                            let len = c.encode_utf8(&mut buf).len();
                            self.emit(used, &buf[..len], out);
                        }
                        // A lone surrogate decodes to nothing a secret holds.
                        None => self.emit(1, &[first], out),
                    }
                }
                b => self.emit(1, &[b], out),
            }
        }
    }
}

/// The forms matched over one layer's units, keeping what a match needs:
/// the last units' bytes (to compare a form against) and where they
/// started (to map a match back), and matches still waiting for the units
/// they extend over.
#[derive(Clone)]
struct LayerMatcher<'a> {
    scrubber: &'a Scrubber,
    /// Units seen so far in this layer.
    seen: usize,
    /// The bytes of the last `window` units, by `seen % window` (a power of
    /// two, at least the longest form and what it redacts before it).
    bytes: Vec<u8>,
    /// Their start offsets, likewise.
    starts: Vec<usize>,
    window: usize,
    /// How many units before a point determine everything this matcher
    /// holds at it (the window, pending extensions).
    replay: usize,
    /// The end of the last unit.
    last_end: usize,
    /// Matches that extend over units not seen yet: (start, units to go).
    waiting: Vec<(usize, usize)>,
}

impl<'a> LayerMatcher<'a> {
    fn new(scrubber: &'a Scrubber) -> Self {
        let needles = || scrubber.forms.forms.iter().map(|f| f.needle);
        let window = needles()
            .map(|n| n.len + n.before)
            .max()
            .unwrap_or(1)
            .next_power_of_two();
        let after = needles().map(|n| n.after).max().unwrap_or(0);
        Self {
            replay: window + after + 1,
            scrubber,
            seen: 0,
            bytes: vec![0; window],
            starts: vec![0; window],
            window,
            last_end: 0,
            waiting: Vec::new(),
        }
    }

    fn push(&mut self, unit: Unit, spans: &mut Vec<(usize, usize)>) {
        let mask = self.window - 1;
        self.bytes[self.seen & mask] = unit.byte;
        self.starts[self.seen & mask] = unit.start;
        self.seen += 1;
        self.last_end = unit.end;
        if !self.waiting.is_empty() {
            self.retire(unit.end, spans);
        }
        if !self.scrubber.forms.may_end(unit.byte) {
            return;
        }
        let Self {
            seen,
            bytes,
            starts,
            waiting,
            ..
        } = self;
        let seen = *seen;
        let back = |k: usize| bytes[(seen - 1 - k) & mask];
        self.scrubber.forms.ending_at(unit.byte, seen, back, |needle| {
            let first = seen.saturating_sub(needle.len + needle.before);
            let start = starts[first & mask];
            if needle.after == 0 {
                spans.push((start, unit.end));
            } else {
                waiting.push((start, needle.after));
            }
        });
    }

    /// One more unit (ending at `end`) for the matches still waiting.
    fn retire(&mut self, end: usize, spans: &mut Vec<(usize, usize)>) {
        self.waiting.retain_mut(|(start, left)| {
            *left -= 1;
            if *left == 0 {
                spans.push((*start, end));
                false
            } else {
                true
            }
        });
    }

    fn finish(&mut self, spans: &mut Vec<(usize, usize)>) {
        for (start, _) in self.waiting.drain(..) {
            spans.push((start, self.last_end));
        }
    }
}

/// How a form is compared with the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// Byte for byte, with the text's `+` read as a space (raw and Base64).
    Exact,
    /// Ignoring ASCII case (hex, kept lowercase).
    Hex,
}

impl Compare {
    /// A text byte as this comparison sees it.
    fn map(self, b: u8) -> u8 {
        match self {
            Self::Exact if b == b'+' => b' ',
            Self::Exact => b,
            Self::Hex => b.to_ascii_lowercase(),
        }
    }
}

/// One form of the secret.
struct Form {
    bytes: Zeroizing<Vec<u8>>,
    compare: Compare,
    needle: Needle,
}

/// The forms, gathered without duplicates.
#[derive(Default)]
struct FormsBuilder {
    forms: Vec<Form>,
}

impl FormsBuilder {
    fn add(&mut self, compare: Compare, bytes: Zeroizing<Vec<u8>>, before: usize, after: usize) {
        let known = self
            .forms
            .iter()
            .any(|f| f.compare == compare && f.bytes == bytes);
        if !bytes.is_empty() && !known {
            let needle = Needle {
                len: bytes.len(),
                before,
                after,
            };
            self.forms.push(Form {
                bytes,
                compare,
                needle,
            });
        }
    }

    fn build(self) -> Forms {
        let words = self.forms.len().div_ceil(64).max(1);
        let mut ends = Zeroizing::new(vec![0u64; 256 * words]);
        for (f, form) in self.forms.iter().enumerate() {
            let last = form.bytes[form.bytes.len() - 1];
            // Every text byte the comparison maps to the form's last byte.
            let also = match form.compare {
                Compare::Exact if last == b' ' => b'+',
                Compare::Exact => last,
                Compare::Hex => last.to_ascii_uppercase(),
            };
            for b in [last, also] {
                ends[usize::from(b) * words + f / 64] |= 1 << (f % 64);
            }
        }
        Forms {
            forms: self.forms,
            words,
            ends,
        }
    }
}

/// The forms, and for each text byte which of them end with it.
struct Forms {
    forms: Vec<Form>,
    /// `u64`s per byte in `ends`.
    words: usize,
    /// Bit `f` of byte `b`'s words: form `f` can end at a text byte `b`.
    ends: Zeroizing<Vec<u64>>,
}

impl Forms {
    /// Whether some form can end at a text byte `b`.
    fn may_end(&self, b: u8) -> bool {
        let at = usize::from(b) * self.words;
        self.ends[at..at + self.words].iter().any(|&w| w != 0)
    }

    /// Calls `found` with every form ending at the text byte `last`, the
    /// `seen`-th of its text; `back(k)` is the byte `k` before it.
    fn ending_at(&self, last: u8, seen: usize, back: impl Fn(usize) -> u8, mut found: impl FnMut(Needle)) {
        let at = usize::from(last) * self.words;
        for (w, &word) in self.ends[at..at + self.words].iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let form = &self.forms[w * 64 + bits.trailing_zeros() as usize];
                bits &= bits - 1;
                let len = form.bytes.len();
                // The last byte matched already (that is what `ends` says).
                if len <= seen && (1..len).all(|k| form.compare.map(back(k)) == form.bytes[len - 1 - k]) {
                    found(form.needle);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
