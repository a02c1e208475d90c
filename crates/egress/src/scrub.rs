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
//! The [`Scrubber`] is built once per call, from the leased secret: one
//! Aho-Corasick automaton over every form (and one, case-insensitive, over
//! the hex form), run in a single pass over the text and every decoding
//! round at once — linear in the text, whatever the number of forms. Bytes
//! that start no form are skipped quickly, and the decoding rounds start
//! only at the first escape (`%` or `\`), so text without one is read once.
//! Its tables are the secret in another shape, so they are zeroed on drop
//! (which is why it is built here rather than with a crate whose automaton
//! memory is freed without zeroing).

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

/// The forms of one secret to remove, as two automata. Zeroed on drop: they
/// are the secret.
pub struct Scrubber {
    /// Raw and Base64 forms, matched exactly (with `+` as space).
    exact: Automaton,
    /// Hex forms, matched ignoring ASCII case.
    hex: Automaton,
    /// 1 for a byte that moves either automaton off its root (after the
    /// same mapping as [`Scrubber::scrub`] applies); bytes that do not are
    /// skipped quickly.
    starts: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Scrubber({} forms)",
            self.exact.needles.len() + self.hex.needles.len()
        )
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
        let mut exact: Vec<(Zeroizing<Vec<u8>>, Needle)> = Vec::new();
        let mut hex: Vec<(Zeroizing<Vec<u8>>, Needle)> = Vec::new();
        let add = |list: &mut Vec<(Zeroizing<Vec<u8>>, Needle)>, form: Zeroizing<Vec<u8>>, before, after| {
            if !form.is_empty() && !list.iter().any(|(f, _)| *f == form) {
                let needle = Needle {
                    len: form.len(),
                    before,
                    after,
                };
                list.push((form, needle));
            }
        };
        for base in bases {
            add(&mut exact, Zeroizing::new(plus_as_space(base)), 0, 0);
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
                    let text = Zeroizing::new(engine.encode(core).into_bytes());
                    add(&mut exact, Zeroizing::new(plus_as_space(&text)), before, after);
                }
                // Where the secret ends the encoded text, its last group and
                // the padding are fixed too: the whole tail goes.
                if after > 0 {
                    for engine in [&STANDARD, &URL_SAFE] {
                        let text = Zeroizing::new(engine.encode(&base[start..]).into_bytes());
                        add(&mut exact, Zeroizing::new(plus_as_space(&text)), before, 0);
                    }
                }
            }
            let mut h = Zeroizing::new(Vec::with_capacity(base.len() * 2));
            for b in base {
                h.push(HEX[usize::from(b >> 4)]);
                h.push(HEX[usize::from(b & 15)]);
            }
            add(&mut hex, h, 0, 0);
        }
        let exact = Automaton::new(&exact);
        let hex = Automaton::new(&hex);
        let starts = Zeroizing::new(
            (0..=255u8)
                .map(|b| {
                    let mapped = if b == b'+' { b' ' } else { b };
                    u8::from(
                        exact.root[usize::from(mapped)] != 0
                            || hex.root[usize::from(b.to_ascii_lowercase())] != 0,
                    )
                })
                .collect(),
        );
        Self { exact, hex, starts }
    }

    /// `bytes` with every form replaced; `None` when nothing was found.
    pub fn scrub(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        if self.exact.needles.is_empty() {
            return None;
        }
        let mut spans = Vec::new();
        let len = bytes.len();
        let (mut exact, mut hex) = (0u32, 0u32);
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
            if exact == 0 && hex == 0 {
                // At both roots: skip what starts no form (and, before the
                // rounds start, is no escape).
                let from = i;
                while i < len
                    && i - from < CHUNK
                    && self.starts[usize::from(bytes[i])] == 0
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
            exact = self.exact.step(exact, if byte == b'+' { b' ' } else { byte });
            hex = self.hex.step(hex, byte.to_ascii_lowercase());
            for (automaton, state) in [(&self.exact, exact), (&self.hex, hex)] {
                automaton.matches(state, |n| {
                    spans.push((
                        (i + 1).saturating_sub(n.len + n.before),
                        (i + 1 + n.after).min(len),
                    ));
                });
            }
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

fn plus_as_space(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect()
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

/// Both automata run over one layer's units, keeping what a match needs to
/// be mapped back: where recent units started, and matches still waiting
/// for the units they extend over.
#[derive(Clone)]
struct LayerMatcher<'a> {
    scrubber: &'a Scrubber,
    exact: u32,
    hex: u32,
    /// Units seen so far in this layer.
    seen: usize,
    /// Start offsets of the last `window` units, by `seen % window` (a
    /// power of two).
    starts: Vec<usize>,
    window: usize,
    /// How many units before a point determine everything this matcher
    /// holds at it (automaton states, pending extensions).
    replay: usize,
    /// The end of the last unit.
    last_end: usize,
    /// Matches that extend over units not seen yet: (start, units to go).
    waiting: Vec<(usize, usize)>,
}

impl<'a> LayerMatcher<'a> {
    fn new(scrubber: &'a Scrubber) -> Self {
        let window = scrubber
            .exact
            .needles
            .iter()
            .chain(&scrubber.hex.needles)
            .map(|n| n.len + n.before)
            .max()
            .unwrap_or(1)
            .next_power_of_two();
        let after = scrubber
            .exact
            .needles
            .iter()
            .chain(&scrubber.hex.needles)
            .map(|n| n.after)
            .max()
            .unwrap_or(0);
        Self {
            replay: window + after + 1,
            scrubber,
            exact: 0,
            hex: 0,
            seen: 0,
            starts: vec![0; window],
            window,
            last_end: 0,
            waiting: Vec::new(),
        }
    }

    fn push(&mut self, unit: Unit, spans: &mut Vec<(usize, usize)>) {
        self.starts[self.seen & (self.window - 1)] = unit.start;
        self.seen += 1;
        self.last_end = unit.end;
        if !self.waiting.is_empty() {
            self.retire(unit.end, spans);
        }
        if self.exact == 0 && self.hex == 0 && self.scrubber.starts[usize::from(unit.byte)] == 0 {
            return; // both stay at their roots
        }
        let byte = if unit.byte == b'+' { b' ' } else { unit.byte };
        self.exact = self.scrubber.exact.step(self.exact, byte);
        let hex = unit.byte.to_ascii_lowercase();
        self.hex = self.scrubber.hex.step(self.hex, hex);
        let scrubber = self.scrubber;
        for (automaton, state) in [(&scrubber.exact, self.exact), (&scrubber.hex, self.hex)] {
            automaton.matches(state, |needle| {
                let first = self.seen.saturating_sub(needle.len + needle.before);
                let start = self.starts[first & (self.window - 1)];
                if needle.after == 0 {
                    spans.push((start, unit.end));
                } else {
                    self.waiting.push((start, needle.after));
                }
            });
        }
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

/// An Aho-Corasick automaton over a few byte strings, its tables zeroed on
/// drop. State 0 is the root; the root's transitions are a dense table,
/// every other state's are a short sorted list, with failure links.
struct Automaton {
    needles: Vec<Needle>,
    /// The root's next state for each byte.
    root: Zeroizing<Vec<u32>>,
    /// State `s`'s transitions are `labels[offsets[s]..offsets[s + 1]]`
    /// to `targets[..]`.
    offsets: Vec<u32>,
    labels: Zeroizing<Vec<u8>>,
    targets: Zeroizing<Vec<u32>>,
    fail: Zeroizing<Vec<u32>>,
    /// The needle ending at a state, plus one (0: none).
    output: Zeroizing<Vec<u32>>,
    /// The nearest state on the failure chain with an output (0: none).
    next_output: Zeroizing<Vec<u32>>,
}

impl Automaton {
    fn new(forms: &[(Zeroizing<Vec<u8>>, Needle)]) -> Self {
        // The trie: each state's label (the byte leading to it), its first
        // child and its next sibling (0: none; the root is no one's child),
        // so building it allocates per table, not per state.
        // At most one state per form byte, plus the root: sized once, so
        // building never reallocates (a zeroizing buffer that grows leaves
        // its old copy unzeroed, and growth was most of the build's cost).
        let states = 1 + forms.iter().map(|(f, _)| f.len()).sum::<usize>();
        fn with_root<T>(states: usize, root: T) -> Vec<T> {
            let mut table = Vec::with_capacity(states);
            table.push(root);
            table
        }
        let mut label: Zeroizing<Vec<u8>> = Zeroizing::new(with_root(states, 0u8));
        let mut first: Vec<u32> = with_root(states, 0);
        let mut sibling: Vec<u32> = with_root(states, 0);
        let mut output: Zeroizing<Vec<u32>> = Zeroizing::new(with_root(states, 0));
        fn kids<'t>(first: &'t [u32], sibling: &'t [u32], s: u32) -> impl Iterator<Item = u32> + 't {
            std::iter::successors(Some(first[s as usize]).filter(|&c| c != 0), move |&c| {
                Some(sibling[c as usize]).filter(|&n| n != 0)
            })
        }
        fn child(first: &[u32], sibling: &[u32], label: &[u8], s: u32, b: u8) -> Option<u32> {
            kids(first, sibling, s).find(|&c| label[c as usize] == b)
        }
        for (i, (form, _)) in forms.iter().enumerate() {
            let mut s = 0u32;
            for &b in form.iter() {
                s = match child(&first, &sibling, &label, s, b) {
                    Some(c) => c,
                    None => {
                        let c = label.len() as u32;
                        label.push(b);
                        output.push(0);
                        first.push(0);
                        sibling.push(first[s as usize]);
                        first[s as usize] = c;
                        c
                    }
                };
            }
            output[s as usize] = i as u32 + 1;
        }
        let n = label.len();
        let mut fail: Zeroizing<Vec<u32>> = Zeroizing::new(vec![0; n]);
        let mut next_output: Zeroizing<Vec<u32>> = Zeroizing::new(vec![0; n]);
        let mut queue: VecDeque<u32> = VecDeque::with_capacity(n);
        queue.extend(kids(&first, &sibling, 0));
        while let Some(s) = queue.pop_front() {
            for c in kids(&first, &sibling, s) {
                let b = label[c as usize];
                let mut f = fail[s as usize];
                let target = loop {
                    if let Some(t) = child(&first, &sibling, &label, f, b) {
                        break t;
                    }
                    if f == 0 {
                        break 0;
                    }
                    f = fail[f as usize];
                };
                fail[c as usize] = target;
                next_output[c as usize] = if output[target as usize] != 0 {
                    target
                } else {
                    next_output[target as usize]
                };
                queue.push_back(c);
            }
        }
        let mut root = Zeroizing::new(vec![0u32; 256]);
        for c in kids(&first, &sibling, 0) {
            root[label[c as usize] as usize] = c;
        }
        let mut offsets = Vec::with_capacity(n + 1);
        let mut labels = Zeroizing::new(Vec::with_capacity(n));
        let mut targets = Zeroizing::new(Vec::with_capacity(n));
        for state in 0..n as u32 {
            offsets.push(labels.len() as u32);
            for c in kids(&first, &sibling, state) {
                labels.push(label[c as usize]);
                targets.push(c);
            }
        }
        offsets.push(labels.len() as u32);
        Self {
            needles: forms.iter().map(|(_, n)| *n).collect(),
            root,
            offsets,
            labels,
            targets,
            fail,
            output,
            next_output,
        }
    }

    /// The state after `b` from state `s`.
    fn step(&self, mut s: u32, b: u8) -> u32 {
        loop {
            if s == 0 {
                return self.root[b as usize];
            }
            let (from, to) = (
                self.offsets[s as usize] as usize,
                self.offsets[s as usize + 1] as usize,
            );
            if let Some(i) = self.labels[from..to].iter().position(|&l| l == b) {
                return self.targets[from + i];
            }
            s = self.fail[s as usize];
        }
    }

    /// Calls `found` with every needle ending at state `s`.
    fn matches(&self, s: u32, mut found: impl FnMut(Needle)) {
        let mut s = s;
        if self.output.get(s as usize).is_some_and(|&o| o == 0) {
            s = self.next_output.get(s as usize).copied().unwrap_or(0);
        }
        while s != 0 {
            let o = self.output[s as usize];
            if o != 0 {
                found(self.needles[o as usize - 1]);
            }
            s = self.next_output[s as usize];
        }
    }
}

#[cfg(test)]
mod tests;
