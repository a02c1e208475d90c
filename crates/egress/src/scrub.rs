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
//!   bytes are redacted with it.
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
//! Not covered: other encodings (Base32, compressed or encrypted data,
//! Base64 of an already-escaped form), and a secret split across header
//! values. A body in a content coding is refused before it gets here.
//!
//! The [`Scrubber`] is built once per call, from the leased secret: one
//! Aho-Corasick automaton over every form (and one, case-insensitive, over
//! the hex form), run in a single pass over the text and every decoding
//! round at once — linear in the text, whatever the number of forms. Its
//! tables are the secret in another shape, so they are zeroed on drop
//! (which is why it is built here rather than with a crate whose automaton
//! memory is freed without zeroing).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
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
        let raw = secret.expose();
        let mut bases: Vec<&[u8]> = vec![raw];
        if basic && let Some(i) = raw.iter().position(|b| *b == b':') {
            bases.push(&raw[i + 1..]);
        }
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
            }
            let mut h = Zeroizing::new(Vec::with_capacity(base.len() * 2));
            for b in base {
                h.push(HEX[usize::from(b >> 4)]);
                h.push(HEX[usize::from(b & 15)]);
            }
            add(&mut hex, h, 0, 0);
        }
        Self {
            exact: Automaton::new(&exact),
            hex: Automaton::new(&hex),
        }
    }

    /// `bytes` with every form replaced; `None` when nothing was found.
    pub fn scrub(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        if self.exact.needles.is_empty() {
            return None;
        }
        let mut spans = Vec::new();
        // Escapes start with '%' or '\': without either, nothing decodes.
        let layers = if memchr::memchr2(b'%', b'\\', bytes).is_some() {
            1 + MAX_DECODES
        } else {
            1
        };
        let mut matchers: Vec<LayerMatcher<'_>> = (0..layers).map(|_| LayerMatcher::new(self)).collect();
        let mut decoders: Vec<Decoder> = (1..layers).map(|_| Decoder::default()).collect();
        let mut batch: Vec<Unit> = Vec::with_capacity(8);
        let mut next: Vec<Unit> = Vec::with_capacity(8);
        for (i, &byte) in bytes.iter().enumerate() {
            batch.clear();
            batch.push(Unit {
                byte,
                start: i,
                end: i + 1,
            });
            feed(
                &mut matchers,
                &mut decoders,
                &mut batch,
                &mut next,
                &mut spans,
                false,
            );
        }
        batch.clear();
        feed(
            &mut matchers,
            &mut decoders,
            &mut batch,
            &mut next,
            &mut spans,
            true,
        );
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
}

/// Pushes `batch` (units of layer 0) through every layer: each layer's
/// matcher sees it, and its decoder turns it into the next layer's units.
/// With `end`, flushes every decoder and matcher.
fn feed(
    matchers: &mut [LayerMatcher<'_>],
    decoders: &mut [Decoder],
    batch: &mut Vec<Unit>,
    next: &mut Vec<Unit>,
    spans: &mut Vec<(usize, usize)>,
    end: bool,
) {
    for (layer, matcher) in matchers.iter_mut().enumerate() {
        for unit in batch.iter() {
            matcher.push(*unit, spans);
        }
        if let Some(decoder) = decoders.get_mut(layer) {
            next.clear();
            for unit in batch.iter() {
                decoder.push(*unit, next);
            }
            if end {
                decoder.finish(next);
            }
            std::mem::swap(batch, next);
        } else {
            batch.clear();
        }
        if end {
            // This layer's units, the flush of the decoder before it
            // included, have all been seen.
            matcher.finish(spans);
        }
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
struct LayerMatcher<'a> {
    scrubber: &'a Scrubber,
    exact: u32,
    hex: u32,
    /// Units seen so far in this layer.
    seen: usize,
    /// Start offsets of the last `window` units, by `seen % window`.
    starts: Vec<usize>,
    window: usize,
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
            .max(1);
        Self {
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
        self.starts[self.seen % self.window] = unit.start;
        self.seen += 1;
        self.last_end = unit.end;
        self.waiting.retain_mut(|(start, left)| {
            *left -= 1;
            if *left == 0 {
                spans.push((*start, unit.end));
                false
            } else {
                true
            }
        });
        let byte = if unit.byte == b'+' { b' ' } else { unit.byte };
        self.exact = self.scrubber.exact.step(self.exact, byte);
        let hex = unit.byte.to_ascii_lowercase();
        self.hex = self.scrubber.hex.step(self.hex, hex);
        let scrubber = self.scrubber;
        for (automaton, state) in [(&scrubber.exact, self.exact), (&scrubber.hex, self.hex)] {
            automaton.matches(state, |needle| {
                let first = self.seen.saturating_sub(needle.len + needle.before);
                let start = self.starts[first % self.window];
                if needle.after == 0 {
                    spans.push((start, unit.end));
                } else {
                    self.waiting.push((start, needle.after));
                }
            });
        }
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
        // The trie: each state's label (the byte leading to it) and children.
        let mut label: Zeroizing<Vec<u8>> = Zeroizing::new(vec![0]);
        let mut children: Vec<Vec<u32>> = vec![Vec::new()];
        let mut output: Zeroizing<Vec<u32>> = Zeroizing::new(vec![0]);
        let child = |children: &[Vec<u32>], label: &[u8], s: u32, b: u8| {
            children[s as usize]
                .iter()
                .copied()
                .find(|&c| label[c as usize] == b)
        };
        for (i, (form, _)) in forms.iter().enumerate() {
            let mut s = 0u32;
            for &b in form.iter() {
                s = match child(&children, &label, s, b) {
                    Some(c) => c,
                    None => {
                        let c = label.len() as u32;
                        label.push(b);
                        children.push(Vec::new());
                        output.push(0);
                        children[s as usize].push(c);
                        c
                    }
                };
            }
            output[s as usize] = i as u32 + 1;
        }
        let n = label.len();
        let mut fail: Zeroizing<Vec<u32>> = Zeroizing::new(vec![0; n]);
        let mut next_output: Zeroizing<Vec<u32>> = Zeroizing::new(vec![0; n]);
        let mut queue: VecDeque<u32> = children[0].iter().copied().collect();
        while let Some(s) = queue.pop_front() {
            for &c in &children[s as usize] {
                let b = label[c as usize];
                let mut f = fail[s as usize];
                let target = loop {
                    if let Some(t) = child(&children, &label, f, b) {
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
        for &c in &children[0] {
            root[label[c as usize] as usize] = c;
        }
        let mut offsets = Vec::with_capacity(n + 1);
        let mut labels = Zeroizing::new(Vec::with_capacity(n));
        let mut targets = Zeroizing::new(Vec::with_capacity(n));
        for kids in &children {
            offsets.push(labels.len() as u32);
            for &c in kids {
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
