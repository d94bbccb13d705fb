//! PII scanner and redaction for generated text.
//!
//! Regexes only propose candidates; each candidate is then validated (Luhn and issuer ranges for
//! cards, country length and mod-97 for IBANs, SSA rules for SSNs, octet ranges for IPv4,
//! `std::net` parsing for IPv6) and checked against its neighbours, so that order numbers,
//! dates, version strings and Rust paths are not redacted.
//!
//! # Segments (why streaming can be exact)
//! The text is cut into segments at *natural* cuts: next to a character that no PII value
//! contains (`,`, `;`, `/`, newline, any non-ASCII …) or next to a space that cannot be inside a
//! value (values only contain single spaces between `[A-Z0-9)]` and `[A-Z0-9(]`, as in
//! `4111 1111`, `GB82 WEST`, `(415) 555`). No candidate crosses a natural cut and every neighbour
//! check treats the character across it like the start or end of the text, so scanning the
//! pieces separately gives the same matches as scanning the whole. A segment that reaches
//! [`MAX_SEGMENT_CHARS`] without a natural cut is cut there (*forced*), by the same rule in both
//! modes; values longer than that (e.g. a 200-character email) are not detected.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use super::compile;
use super::policy::{OutputAction, OutputPolicy, POLICY_VERSION};

/// Longest segment, in characters, and so the most text [`super::stream::StreamRedactor`] holds
/// back. 128 covers every IBAN, card, phone and IP form and nearly all real email addresses
/// (which, at 64 characters, a tighter bound would start to miss).
pub const MAX_SEGMENT_CHARS: usize = 128;

/// A kind of personal data the scanner knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    /// RFC 5322-ish address with a dotted domain and an alphabetic TLD.
    Email,
    /// E.164 (`+` and 8-15 digits) or NANP with separators.
    Phone,
    /// Payment card: 13-19 digits, known issuer range, Luhn.
    CreditCard,
    /// IBAN: known country, its length, mod-97 == 1.
    Iban,
    /// US social security number `ddd-dd-dddd`.
    UsSsn,
    /// Dotted-quad IPv4 address.
    Ipv4,
    /// IPv6 address (not loopback or unspecified).
    Ipv6,
}

impl PiiKind {
    /// Every kind, in declaration order.
    pub const ALL: [PiiKind; 7] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::CreditCard,
        PiiKind::Iban,
        PiiKind::UsSsn,
        PiiKind::Ipv4,
        PiiKind::Ipv6,
    ];

    /// Stable label used in `[REDACTED:<LABEL>]` and as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            PiiKind::Email => "EMAIL",
            PiiKind::Phone => "PHONE",
            PiiKind::CreditCard => "CREDIT_CARD",
            PiiKind::Iban => "IBAN",
            PiiKind::UsSsn => "US_SSN",
            PiiKind::Ipv4 => "IPV4",
            PiiKind::Ipv6 => "IPV6",
        }
    }

    /// When candidates overlap, the longer wins; on a tie, the earlier kind here.
    fn rank(self) -> u8 {
        match self {
            PiiKind::Iban => 0,
            PiiKind::CreditCard => 1,
            PiiKind::UsSsn => 2,
            PiiKind::Email => 3,
            PiiKind::Ipv6 => 4,
            PiiKind::Phone => 5,
            PiiKind::Ipv4 => 6,
        }
    }
}

/// One validated value: its kind and byte range in the scanned text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct PiiMatch {
    /// What was found.
    pub kind: PiiKind,
    /// Byte range, on character boundaries.
    pub range: Range<usize>,
}

/// Result of [`check_output`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputDecision<'a> {
    /// The policy action (what was done with the matches).
    pub action: OutputAction,
    /// Rule set that produced the decision.
    pub policy_version: &'static str,
    /// Matches, sorted and disjoint; empty for `Allow`.
    pub matches: Vec<PiiMatch>,
    /// Text to emit: redacted for `Redact`, unchanged otherwise.
    #[serde(skip)]
    pub text: Cow<'a, str>,
}

/// Applies an output policy to a complete text.
pub fn check_output<'a>(policy: &OutputPolicy, text: &'a str) -> OutputDecision<'a> {
    let matches = match policy.action {
        OutputAction::Allow => Vec::new(),
        OutputAction::Flag | OutputAction::Redact => scan(text, &policy.kinds),
    };
    let text = if policy.action == OutputAction::Redact && !matches.is_empty() {
        Cow::Owned(redact(text, &matches))
    } else {
        Cow::Borrowed(text)
    };
    OutputDecision {
        action: policy.action,
        policy_version: POLICY_VERSION,
        matches,
        text,
    }
}

/// Finds the values of the requested kinds; sorted by position, never overlapping.
pub fn scan(text: &str, kinds: &BTreeSet<PiiKind>) -> Vec<PiiMatch> {
    let mut out = Vec::new();
    scan_prefix(text, None, true, kinds, 0, &mut out);
    out
}

/// Replaces each match with `[REDACTED:<LABEL>]`.
///
/// Fails closed on malformed input: ranges are clamped to the text and widened to character
/// boundaries, and overlapping ranges are merged, so a bad range redacts more, never less.
pub fn redact(text: &str, matches: &[PiiMatch]) -> String {
    let mut sorted: Vec<&PiiMatch> = matches.iter().collect();
    sorted.sort_by_key(|m| (m.range.start, std::cmp::Reverse(m.range.end)));
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for m in sorted {
        let start = floor_boundary(text, m.range.start);
        let end = ceil_boundary(text, m.range.end.max(m.range.start));
        if end <= pos {
            continue;
        }
        if start >= pos {
            out.push_str(text.get(pos..start).unwrap_or_default());
            out.push_str("[REDACTED:");
            out.push_str(m.kind.label());
            out.push(']');
        }
        pos = end;
    }
    out.push_str(text.get(pos..).unwrap_or_default());
    out
}

fn floor_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Scans the longest prefix of `text` whose segmentation is decided and returns its length.
///
/// `prev` is the character before `text` (segmentation looks one character back); with
/// `at_end` the text is complete and everything is consumed. Matches are pushed with `base`
/// added to their ranges. Shared by [`scan`] and the stream redactor, which is what makes them
/// agree.
pub(crate) fn scan_prefix(
    text: &str,
    mut prev: Option<char>,
    at_end: bool,
    kinds: &BTreeSet<PiiKind>,
    base: usize,
    out: &mut Vec<PiiMatch>,
) -> usize {
    let (mut unit_start, mut pos) = (0, 0);
    while let Some(cut) = text
        .get(pos..)
        .and_then(|rest| first_cut(rest, prev, at_end))
    {
        let (len, forced) = match cut {
            Cut::Natural(len) => (len, false),
            Cut::Forced(len) => (len, true),
        };
        prev = text.get(pos..pos + len).and_then(|s| s.chars().next_back());
        pos += len;
        // Natural cuts need no separate scan; forced ones do, or a value could span them.
        if forced {
            scan_unit(
                text.get(unit_start..pos).unwrap_or_default(),
                base + unit_start,
                kinds,
                out,
            );
            unit_start = pos;
        }
    }
    scan_unit(
        text.get(unit_start..pos).unwrap_or_default(),
        base + unit_start,
        kinds,
        out,
    );
    pos
}

enum Cut {
    Natural(usize),
    Forced(usize),
}

/// End of the first segment of a non-empty `text`, or `None` if more input is needed.
fn first_cut(text: &str, prev: Option<char>, at_end: bool) -> Option<Cut> {
    let mut it = text.char_indices().peekable();
    let (_, mut a) = it.next()?;
    let mut before_a = prev;
    let mut chars = 1;
    while let Some((offset, b)) = it.next() {
        if chars == MAX_SEGMENT_CHARS {
            return Some(Cut::Forced(offset));
        }
        let after_b = it.peek().map(|&(_, c)| c);
        if b == ' ' && after_b.is_none() && !at_end {
            return None;
        }
        if is_natural_cut(before_a, a, b, after_b) {
            return Some(Cut::Natural(offset));
        }
        (before_a, a) = (Some(a), b);
        chars += 1;
    }
    at_end.then_some(Cut::Natural(text.len()))
}

/// Whether the position between `a` and `b` can be cut (see the module docs).
fn is_natural_cut(before_a: Option<char>, a: char, b: char, after_b: Option<char>) -> bool {
    let loose = |l: Option<char>, r: Option<char>| {
        !(l.is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == ')')
            && r.is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '('))
    };
    !is_soft(a)
        || !is_soft(b)
        || (a == ' ' && loose(before_a, Some(b)))
        || (b == ' ' && loose(Some(a), after_b))
}

/// Characters that may occur inside a value or be inspected next to one.
fn is_soft(c: char) -> bool {
    c.is_ascii_alphanumeric() || " ._%+-@():".contains(c)
}

/// Scans one unit (a stretch of text with no forced cut inside).
fn scan_unit(t: &str, base: usize, kinds: &BTreeSet<PiiKind>, out: &mut Vec<PiiMatch>) {
    if t.is_empty() {
        return;
    }
    let mut found = Vec::new();
    for &kind in kinds {
        let detect = match kind {
            PiiKind::Email => emails,
            PiiKind::Phone => phones,
            PiiKind::CreditCard => cards,
            PiiKind::Iban => ibans,
            PiiKind::UsSsn => ssns,
            PiiKind::Ipv4 => ipv4s,
            PiiKind::Ipv6 => ipv6s,
        };
        detect(t, &mut |range| found.push(PiiMatch { kind, range }));
    }
    found.sort_by_key(|m| {
        (
            std::cmp::Reverse(m.range.len()),
            m.kind.rank(),
            m.range.start,
        )
    });
    let mut kept: Vec<PiiMatch> = Vec::new();
    for m in found {
        if kept
            .iter()
            .all(|k| k.range.end <= m.range.start || m.range.end <= k.range.start)
        {
            kept.push(m);
        }
    }
    kept.sort_by_key(|m| m.range.start);
    out.extend(kept.into_iter().map(|m| PiiMatch {
        kind: m.kind,
        range: m.range.start + base..m.range.end + base,
    }));
}

type Sink<'a> = &'a mut dyn FnMut(Range<usize>);

/// True if the text before `start` continues the token (so the candidate is part of something
/// longer). Looks through at most one soft separator; see the module docs. A colon is not
/// glue, so "card:4111…" and "10.0.0.1:8080" are still found.
fn glued_before(t: &str, start: usize) -> bool {
    let mut it = t.get(..start).unwrap_or_default().chars().rev();
    match it.next() {
        Some(c) if c.is_ascii_alphanumeric() || "_+@".contains(c) => true,
        Some('.' | '-') => it.next().is_some_and(|c| c.is_ascii_alphanumeric()),
        _ => false,
    }
}

/// True if the text after `end` continues the token.
fn glued_after(t: &str, end: usize) -> bool {
    let mut it = t.get(end..).unwrap_or_default().chars();
    match it.next() {
        Some(c) if c.is_ascii_alphanumeric() || "_@".contains(c) => true,
        Some('.' | '-') => it.next().is_some_and(|c| c.is_ascii_alphanumeric()),
        _ => false,
    }
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    compile(
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,63}",
    )
});

fn emails(t: &str, sink: Sink<'_>) {
    for m in EMAIL.find_iter(t) {
        // A local part cannot start with a dot ("see...john@x.com").
        let start = m.start() + (m.as_str().len() - m.as_str().trim_start_matches('.').len());
        let local_empty = t.get(start..).is_some_and(|s| s.starts_with('@'));
        let next_glued = t
            .get(m.end()..)
            .and_then(|s| s.chars().next())
            .is_some_and(|c| c.is_ascii_alphanumeric() || "_@-".contains(c));
        if !local_empty && !next_glued {
            sink(start..m.end());
        }
    }
}

/// E.164, optionally grouped with single spaces, dots or dashes.
static E164: LazyLock<Regex> = LazyLock::new(|| compile(r"\+[0-9](?:[ .-]?[0-9])*"));
/// NANP: area and exchange codes start with 2-9; separators are required (bare 10-digit runs
/// are too often order or account numbers).
static NANP: LazyLock<Regex> = LazyLock::new(|| {
    compile(r"(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}")
});

fn phones(t: &str, sink: Sink<'_>) {
    for m in E164.find_iter(t) {
        let digits = m.as_str().bytes().filter(u8::is_ascii_digit).count();
        if (8..=15).contains(&digits) && !glued_before(t, m.start()) && !glued_after(t, m.end()) {
            sink(m.range());
        }
    }
    for m in NANP.find_iter(t) {
        if !glued_before(t, m.start()) && !glued_after(t, m.end()) {
            sink(m.range());
        }
    }
}

/// Maximal runs of digit groups separated by one space or dash.
static DIGIT_RUN: LazyLock<Regex> = LazyLock::new(|| compile(r"[0-9]+(?:[ -][0-9]+)*"));

fn cards(t: &str, sink: Sink<'_>) {
    for m in DIGIT_RUN.find_iter(t) {
        // A glued end only disqualifies windows that touch it ("mc2 2223 …" still has a card).
        let (glued_start, glued_end) = (glued_before(t, m.start()), glued_after(t, m.end()));
        // (start, end) of each digit group, relative to `t`.
        let mut groups = Vec::new();
        let mut start = None;
        for (i, b) in m.as_str().bytes().enumerate() {
            match (b.is_ascii_digit(), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    groups.push((m.start() + s, m.start() + i));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            groups.push((m.start() + s, m.end()));
        }
        // Longest valid window of whole groups starting at each group, left to right.
        let first = usize::from(glued_start);
        let last = groups.len().saturating_sub(usize::from(glued_end));
        let mut i = first;
        while i < last {
            let mut best = None;
            let mut digits = String::new();
            for j in i..last {
                let (gs, ge) = groups[j];
                // Grouped cards use groups of 3+ digits with one kind of separator; this keeps
                // "12-34-56..." and "2024-01-15 …" from forming windows.
                let grouped = j > i;
                if grouped
                    && (ge - gs < 3
                        || groups[i].1 - groups[i].0 < 3
                        || !same_separator(t, &groups[i..=j]))
                {
                    break;
                }
                digits.push_str(t.get(gs..ge).unwrap_or_default());
                if digits.len() > 19 {
                    break;
                }
                if digits.len() >= 13
                    && plausible_card(digits.as_bytes())
                    && luhn(digits.as_bytes())
                {
                    best = Some(j);
                }
            }
            match best {
                Some(j) => {
                    sink(groups[i].0..groups[j].1);
                    i = j + 1;
                }
                None => i += 1,
            }
        }
    }
}

fn same_separator(t: &str, groups: &[(usize, usize)]) -> bool {
    let seps: Vec<&str> = groups
        .windows(2)
        .map(|w| t.get(w[0].1..w[1].0).unwrap_or_default())
        .collect();
    seps.windows(2).all(|w| w[0] == w[1])
}

/// Issuer (IIN) ranges and lengths of the major networks: Visa, Mastercard, Amex, Discover,
/// JCB, Diners, UnionPay, Maestro. Without this, one random 13-19 digit number in ten passes Luhn.
fn plausible_card(d: &[u8]) -> bool {
    let prefix = |n: usize| -> u32 {
        d.iter()
            .take(n)
            .fold(0, |acc, &b| acc * 10 + u32::from(b - b'0'))
    };
    let len = d.len();
    match d.first() {
        Some(b'4') => matches!(len, 13 | 16 | 19),
        Some(b'2') => (2221..=2720).contains(&prefix(4)) && len == 16,
        Some(b'3') => {
            (matches!(prefix(2), 34 | 37) && len == 15)
                || ((3528..=3589).contains(&prefix(4)) && (16..=19).contains(&len))
                || (((300..=305).contains(&prefix(3)) || matches!(prefix(2), 36 | 38 | 39))
                    && (14..=19).contains(&len))
        }
        Some(b'5') => {
            ((51..=55).contains(&prefix(2)) && len == 16)
                || (matches!(prefix(2), 50 | 56..=58) && (13..=19).contains(&len))
        }
        Some(b'6') => (13..=19).contains(&len),
        _ => false,
    }
}

fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &b)| {
            let v = u32::from(b - b'0');
            if i % 2 == 1 {
                if v * 2 > 9 {
                    v * 2 - 9
                } else {
                    v * 2
                }
            } else {
                v
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

static IBAN_START: LazyLock<Regex> = LazyLock::new(|| compile(r"[A-Z]{2}[0-9]{2}"));

/// Uppercase IBANs, compact or in groups of four separated by single spaces.
fn ibans(t: &str, sink: Sink<'_>) {
    let bytes = t.as_bytes();
    for m in IBAN_START.find_iter(t) {
        let Some(len) = iban_length(m.as_str().get(..2).unwrap_or_default()) else {
            continue;
        };
        if glued_before(t, m.start()) {
            continue;
        }
        let mut chars: Vec<u8> = m.as_str().bytes().collect();
        let mut i = m.end();
        while chars.len() < len {
            match bytes.get(i) {
                Some(&b) if b.is_ascii_uppercase() || b.is_ascii_digit() => chars.push(b),
                Some(b' ')
                    if chars.len().is_multiple_of(4)
                        && bytes
                            .get(i + 1)
                            .is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) => {}
                _ => break,
            }
            i += 1;
        }
        if chars.len() == len && !glued_after(t, i) && iban_checksum_ok(&chars) {
            sink(m.start()..i);
        }
    }
}

/// ISO 13616 lengths for the countries we recognise; unknown countries are not matched.
fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "NO" => 15,
        "BE" => 16,
        "DK" | "FI" | "FO" | "GL" | "NL" => 18,
        "MK" | "SI" => 19,
        "AT" | "BA" | "EE" | "KZ" | "LT" | "LU" | "XK" => 20,
        "CH" | "HR" | "LI" | "LV" => 21,
        "BG" | "BH" | "CR" | "DE" | "GB" | "GE" | "IE" | "ME" | "RS" => 22,
        "AE" | "GI" | "IL" => 23,
        "AD" | "CZ" | "ES" | "MD" | "PK" | "RO" | "SA" | "SE" | "SK" | "TN" | "VG" => 24,
        "PT" => 25,
        "IS" | "TR" => 26,
        "FR" | "GR" | "IT" | "MC" | "MR" | "SM" => 27,
        "AL" | "AZ" | "CY" | "DO" | "GT" | "HU" | "LB" | "PL" => 28,
        "BR" | "EG" | "PS" | "QA" | "UA" => 29,
        "JO" | "KW" | "MU" => 30,
        "MT" => 31,
        _ => return None,
    })
}

/// ISO 7064 mod 97-10: move the first four characters to the end, letters become 10..35.
fn iban_checksum_ok(chars: &[u8]) -> bool {
    let (head, tail) = chars.split_at(4.min(chars.len()));
    let mut rem: u32 = 0;
    for &b in tail.iter().chain(head) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

static SSN: LazyLock<Regex> = LazyLock::new(|| compile(r"[0-9]{3}-[0-9]{2}-[0-9]{4}"));

fn ssns(t: &str, sink: Sink<'_>) {
    for m in SSN.find_iter(t) {
        let s = m.as_str();
        let (area, group, serial) = (&s[..3], &s[4..6], &s[7..]);
        let valid = area != "000"
            && area != "666"
            && !area.starts_with('9')
            && group != "00"
            && serial != "0000";
        if valid && !glued_before(t, m.start()) && !glued_after(t, m.end()) {
            sink(m.range());
        }
    }
}

static IPV4: LazyLock<Regex> =
    LazyLock::new(|| compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"));

fn ipv4s(t: &str, sink: Sink<'_>) {
    for m in IPV4.find_iter(t) {
        // No leading zeros: "01.02.03.04" is ambiguous (octal in some parsers) and rarely an IP.
        let valid = m
            .as_str()
            .split('.')
            .all(|o| o.parse::<u8>().is_ok() && (o == "0" || !o.starts_with('0')));
        if valid && !glued_before(t, m.start()) && !glued_after(t, m.end()) {
            sink(m.range());
        }
    }
}

static IPV6: LazyLock<Regex> = LazyLock::new(|| {
    compile(r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{0,4})")
});

fn ipv6s(t: &str, sink: Sink<'_>) {
    for m in IPV6.find_iter(t) {
        let mut start = m.start();
        // "addr:2001:db8::1": the single leading colon belongs to the label.
        if m.as_str().starts_with(':') && !m.as_str().starts_with("::") {
            start += 1;
        }
        let candidate = t.get(start..m.end()).unwrap_or_default();
        let prev_glued = t
            .get(..start)
            .and_then(|s| s.chars().next_back())
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        // A digit is required: "db::add" parses as IPv6 but is a path in code.
        let valid = candidate.bytes().any(|b| b.is_ascii_digit())
            && candidate
                .parse::<Ipv6Addr>()
                .is_ok_and(|ip| !ip.is_loopback() && !ip.is_unspecified());
        if valid && !prev_glued && !glued_after(t, m.end()) {
            sink(start..m.end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PiiKind::*;

    fn all() -> BTreeSet<PiiKind> {
        PiiKind::ALL.into_iter().collect()
    }

    fn found(text: &str) -> Vec<(PiiKind, &str)> {
        scan(text, &all())
            .into_iter()
            .map(|m| (m.kind, &text[m.range]))
            .collect()
    }

    /// (text, the single value that must be found in it, its kind)
    const POSITIVE: &[(&str, &str, PiiKind)] = &[
        (
            "card 4111 1111 1111 1111 exp 12/27",
            "4111 1111 1111 1111",
            CreditCard,
        ),
        (
            "card:4111-1111-1111-1111.",
            "4111-1111-1111-1111",
            CreditCard,
        ),
        ("4111111111111111", "4111111111111111", CreditCard),
        ("amex 3782 822463 10005", "3782 822463 10005", CreditCard),
        (
            "mc 5555 5555 5555 4444, thanks",
            "5555 5555 5555 4444",
            CreditCard,
        ),
        ("mc2 2223003122003222", "2223003122003222", CreditCard),
        (
            "card 4111 1111 1111 1111 123",
            "4111 1111 1111 1111",
            CreditCard,
        ),
        (
            "IBAN DE89 3704 0044 0532 0130 00 please",
            "DE89 3704 0044 0532 0130 00",
            Iban,
        ),
        (
            "GB82 WEST 1234 5698 7654 32",
            "GB82 WEST 1234 5698 7654 32",
            Iban,
        ),
        (
            "pay GB82WEST12345698765432.",
            "GB82WEST12345698765432",
            Iban,
        ),
        (
            "FR14 2004 1010 0505 0001 3M02 606",
            "FR14 2004 1010 0505 0001 3M02 606",
            Iban,
        ),
        ("NL91 ABNA 0417 1643 00", "NL91 ABNA 0417 1643 00", Iban),
        (
            "ES91 2100 0418 4502 0005 1332",
            "ES91 2100 0418 4502 0005 1332",
            Iban,
        ),
        (
            "IT60 X054 2811 1010 0000 0123 456",
            "IT60 X054 2811 1010 0000 0123 456",
            Iban,
        ),
        ("ssn 123-45-6789.", "123-45-6789", UsSsn),
        ("ssn: 078-05-1120", "078-05-1120", UsSsn),
        (
            "write to john.doe+tag@example.co.uk.",
            "john.doe+tag@example.co.uk",
            Email,
        ),
        ("(a_b@sub.example.com)", "a_b@sub.example.com", Email),
        ("see ...x@y.io", "x@y.io", Email),
        ("call +14155552671 now", "+14155552671", Phone),
        ("call +44 20 7946 0958", "+44 20 7946 0958", Phone),
        ("call (415) 555-2671", "(415) 555-2671", Phone),
        ("call 415-555-2671.", "415-555-2671", Phone),
        ("call 415.555.2671", "415.555.2671", Phone),
        ("call +1 415 555 2671", "+1 415 555 2671", Phone),
        ("call 1-800-555-0199", "1-800-555-0199", Phone),
        ("host 192.168.1.10:8080", "192.168.1.10", Ipv4),
        ("dns 8.8.8.8.", "8.8.8.8", Ipv4),
        ("version 1.2.3.4", "1.2.3.4", Ipv4),
        ("ip 2001:db8::1", "2001:db8::1", Ipv6),
        (
            "ip fe80::1ff:fe23:4567:890a",
            "fe80::1ff:fe23:4567:890a",
            Ipv6,
        ),
        (
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            Ipv6,
        ),
        ("mapped ::ffff:192.0.2.1", "::ffff:192.0.2.1", Ipv6),
        ("addr:2001:db8::7", "2001:db8::7", Ipv6),
    ];

    /// Text in which nothing may be found.
    const NEGATIVE: &[&str] = &[
        "card 4111 1111 1111 1112",
        "card 4111111111111112",
        "IBAN DE89 3704 0044 0532 0130 01",
        "GB82 WEST 1234 5698 7654 33",
        "XX89 3704 0044 0532 0130 00",
        "de89 3704 0044 0532 0130 00",
        "000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000",
        "123-45-6789-0 and 1123-45-6789",
        "999.1.1.1 256.1.1.1 v1.2.3.4 1.2.3.4.5 01.02.03.04 10.0.0",
        "dates 2024-01-15, 15/01/2024, 2024-01-15 10:30:00, 12:30:45",
        "Order #1234567890123 and order 20240115-000123",
        "INV-2024-000000012345 tracking 1Z999AA10123456784",
        "epoch 1700000000000 ms, id 12-34-56-78-90-12-34",
        "use std::io::Result; let v = Vec::new(); a::b db::add(x)",
        "mac 00:1A:2B:3C:4D:5E, localhost ::1, any ::",
        "555-123-4567 (123) 555-2671 +123 456 4155552671",
        "user@localhost, @handle, a@b.c, x@-bad.com",
        "1,234,567,890,123,456 and 3.14159265358979323",
    ];

    #[test]
    fn positives_are_found_exactly() {
        for &(text, value, kind) in POSITIVE {
            assert_eq!(found(text), vec![(kind, value)], "{text:?}");
        }
    }

    #[test]
    fn negatives_are_not_found() {
        for text in NEGATIVE {
            assert_eq!(found(text), vec![], "{text:?}");
        }
    }

    #[test]
    fn validators() {
        assert!(luhn(b"4111111111111111") && !luhn(b"4111111111111112"));
        assert!(iban_checksum_ok(b"DE89370400440532013000"));
        assert!(!iban_checksum_ok(b"DE89370400440532013001"));
        assert!(!iban_checksum_ok(b"DE8937040044053201300$"));
        assert!(plausible_card(b"378282246310005") && !plausible_card(b"1234567890123"));
    }

    #[test]
    fn kinds_filter_and_several_matches() {
        let text = "a@b.io, 4111 1111 1111 1111; 10.0.0.1";
        let only: BTreeSet<_> = [Email, Ipv4].into_iter().collect();
        let kinds: Vec<_> = scan(text, &only).into_iter().map(|m| m.kind).collect();
        assert_eq!(kinds, vec![Email, Ipv4]);
        assert_eq!(found(text).len(), 3);
        assert!(scan(text, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn redaction_replaces_each_span() {
        let text = "mail a@b.io or call +14155552671, ok";
        assert_eq!(
            redact(text, &scan(text, &all())),
            "mail [REDACTED:EMAIL] or call [REDACTED:PHONE], ok"
        );
        assert_eq!(redact(text, &[]), text);
    }

    #[test]
    fn redaction_fails_closed_on_bad_ranges() {
        let text = "héllo wörld";
        let m = |kind, range| PiiMatch { kind, range };
        // Overlapping, unsorted, inside a multi-byte char, past the end.
        let bad = [m(Email, 3..8), m(Phone, 0..2), m(Ipv4, 7..99)];
        assert_eq!(redact(text, &bad), "[REDACTED:PHONE][REDACTED:EMAIL]");
        let bad = [m(Email, 0..1), m(Ipv4, 9..99)];
        assert_eq!(redact(text, &bad), "[REDACTED:EMAIL]éllo w[REDACTED:IPV4]");
        assert_eq!(
            redact(text, &[m(Email, Range { start: 5, end: 3 })]),
            "héll[REDACTED:EMAIL]o wörld"
        );
    }

    #[test]
    fn check_output_follows_policy() {
        let text = "ssn 123-45-6789";
        let mut policy = OutputPolicy::default();
        let d = check_output(&policy, text);
        assert_eq!(d.text, "ssn [REDACTED:US_SSN]");
        assert_eq!((d.matches.len(), d.policy_version), (1, POLICY_VERSION));
        policy.action = OutputAction::Flag;
        let d = check_output(&policy, text);
        assert_eq!((d.text.as_ref(), d.matches.len()), (text, 1));
        policy.action = OutputAction::Allow;
        assert!(check_output(&policy, text).matches.is_empty());
    }

    #[test]
    fn long_runs_are_cut_and_still_scanned() {
        // 300 uppercase letters with tight spaces: forced cuts every MAX_SEGMENT_CHARS.
        let filler = "AB ".repeat(100);
        let text = format!("{filler}x a@b.io {filler}");
        assert_eq!(found(&text), vec![(Email, "a@b.io")]);
    }

    #[test]
    fn every_pattern_compiles() {
        for re in [
            &EMAIL,
            &E164,
            &NANP,
            &DIGIT_RUN,
            &IBAN_START,
            &SSN,
            &IPV4,
            &IPV6,
        ] {
            LazyLock::force(re);
        }
    }
}
