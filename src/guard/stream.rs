//! Streaming PII redaction for token-by-token output.
//!
//! A value can arrive split across chunks ("4111 11" + "11 1111 1111 1111"), so the redactor
//! holds back the segment still in progress (see [`super::pii`]: at most
//! [`MAX_SEGMENT_CHARS`](super::pii::MAX_SEGMENT_CHARS) characters, usually one word) and emits everything before the last
//! decided cut. Because cuts are decided by the same function as in [`super::pii::scan`], the
//! concatenated output equals [`super::pii::redact`] of the whole text, byte for byte.

use std::collections::BTreeSet;

use super::pii::{redact, scan_prefix, PiiKind, PiiMatch};
use super::policy::{OutputAction, OutputPolicy};

/// Incremental output guard. Feed chunks with [`push`](Self::push), then call
/// [`finish`](Self::finish) once at the end of the stream.
///
/// - `Redact`: outputs concatenate to `redact(full, scan(full))`; up to
///   [`MAX_SEGMENT_CHARS`](super::pii::MAX_SEGMENT_CHARS) characters are delayed.
/// - `Flag`: chunks are returned unchanged and immediately; matches are still collected.
/// - `Allow`: chunks are returned unchanged; nothing is scanned.
#[derive(Debug, Clone)]
pub struct StreamRedactor {
    action: OutputAction,
    kinds: BTreeSet<PiiKind>,
    /// Input not yet scanned (the segment in progress); starts at a cut.
    pending: String,
    /// Last character before `pending`, which the next cut decision may look at.
    prev: Option<char>,
    /// Byte offset of `pending` in the whole stream.
    offset: usize,
    matches: Vec<PiiMatch>,
}

impl StreamRedactor {
    /// A redactor for one response stream.
    pub fn new(policy: &OutputPolicy) -> Self {
        Self {
            action: policy.action,
            kinds: policy.kinds.clone(),
            pending: String::new(),
            prev: None,
            offset: 0,
            matches: Vec::new(),
        }
    }

    /// Accepts the next chunk and returns the text that is safe to emit now.
    pub fn push(&mut self, chunk: &str) -> String {
        if self.action == OutputAction::Allow {
            return chunk.to_owned();
        }
        self.pending.push_str(chunk);
        let emitted = self.advance(false);
        match self.action {
            OutputAction::Redact => emitted,
            OutputAction::Allow | OutputAction::Flag => chunk.to_owned(),
        }
    }

    /// Ends the stream and returns whatever was held back (redacted as needed).
    ///
    /// Calling `push` afterwards starts a new segment at the current offset, as if the earlier
    /// text had ended there.
    pub fn finish(&mut self) -> String {
        if self.action == OutputAction::Allow {
            return String::new();
        }
        let emitted = self.advance(true);
        self.prev = None;
        match self.action {
            OutputAction::Redact => emitted,
            OutputAction::Allow | OutputAction::Flag => String::new(),
        }
    }

    /// Every match so far, with byte ranges in the concatenated input stream.
    pub fn matches(&self) -> &[PiiMatch] {
        &self.matches
    }

    /// Characters received but not yet emitted (`Redact`) or scanned (`Flag`); never more than
    /// [`MAX_SEGMENT_CHARS`](super::pii::MAX_SEGMENT_CHARS) after a `push` returns.
    pub fn held_back_chars(&self) -> usize {
        self.pending.chars().count()
    }

    /// Scans the decided prefix of `pending`, records its matches, removes it and returns it
    /// redacted.
    fn advance(&mut self, at_end: bool) -> String {
        let mut found = Vec::new();
        let done = scan_prefix(&self.pending, self.prev, at_end, &self.kinds, 0, &mut found);
        let head: String = self.pending.drain(..done).collect();
        if let Some(c) = head.chars().next_back() {
            self.prev = Some(c);
        }
        let out = redact(&head, &found);
        self.matches.extend(found.into_iter().map(|m| PiiMatch {
            kind: m.kind,
            range: m.range.start + self.offset..m.range.end + self.offset,
        }));
        self.offset += done;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::pii::{scan, MAX_SEGMENT_CHARS};

    fn policy(action: OutputAction) -> OutputPolicy {
        OutputPolicy {
            action,
            ..OutputPolicy::default()
        }
    }

    /// Streams `chunks`, checking the hold-back bound and the prefix property after every push.
    fn run(action: OutputAction, chunks: &[&str]) -> (String, Vec<PiiMatch>) {
        let full: String = chunks.concat();
        let expected = match action {
            OutputAction::Redact => redact(&full, &scan(&full, &OutputPolicy::default().kinds)),
            OutputAction::Allow | OutputAction::Flag => full.clone(),
        };
        let mut r = StreamRedactor::new(&policy(action));
        let mut out = String::new();
        for chunk in chunks {
            out.push_str(&r.push(chunk));
            assert!(r.held_back_chars() <= MAX_SEGMENT_CHARS, "{chunks:?}");
            assert!(expected.starts_with(&out), "{chunks:?}: {out:?}");
        }
        out.push_str(&r.finish());
        assert_eq!(out, expected, "{chunks:?}");
        assert_eq!(r.held_back_chars(), 0);
        (out, r.matches().to_vec())
    }

    const TEXT: &str = "Pay 4111 1111 1111 1111 or mail john.doe@example.com today.";

    #[test]
    fn every_two_and_three_way_split_matches_batch_redaction() {
        let cuts: Vec<usize> = (0..=TEXT.len()).collect();
        let batch = scan(TEXT, &OutputPolicy::default().kinds);
        assert_eq!(batch.len(), 2);
        for &i in &cuts {
            let (_, m) = run(OutputAction::Redact, &[&TEXT[..i], &TEXT[i..]]);
            assert_eq!(m, batch);
            for &j in &cuts[i..] {
                let (_, m) = run(OutputAction::Redact, &[&TEXT[..i], &TEXT[i..j], &TEXT[j..]]);
                assert_eq!(m, batch);
            }
        }
        let (out, _) = run(OutputAction::Redact, &[TEXT]);
        assert_eq!(
            out,
            "Pay [REDACTED:CREDIT_CARD] or mail [REDACTED:EMAIL] today."
        );
    }

    #[test]
    fn flag_and_allow_pass_text_through_immediately() {
        let mut r = StreamRedactor::new(&policy(OutputAction::Flag));
        assert_eq!(r.push("ssn 123-45-"), "ssn 123-45-");
        assert_eq!(r.push("6789 ok"), "6789 ok");
        assert_eq!(r.finish(), "");
        assert_eq!(
            r.matches(),
            scan("ssn 123-45-6789 ok", &OutputPolicy::default().kinds)
        );
        let mut r = StreamRedactor::new(&policy(OutputAction::Allow));
        assert_eq!(r.push("a@b.io"), "a@b.io");
        assert_eq!(r.finish(), "");
        assert!(r.matches().is_empty());
    }

    #[test]
    fn prose_is_held_back_one_word_at_most() {
        let mut r = StreamRedactor::new(&policy(OutputAction::Redact));
        assert_eq!(r.push("hello wor"), "hello ");
        assert_eq!(r.push("ld, and"), "world, ");
        assert_eq!(r.held_back_chars(), 3);
        assert_eq!(r.finish(), "and");
    }

    #[test]
    fn unbroken_runs_are_released_at_the_bound() {
        let mut r = StreamRedactor::new(&policy(OutputAction::Redact));
        let run = "A".repeat(3 * MAX_SEGMENT_CHARS);
        let out = r.push(&run);
        assert_eq!(out.len(), 2 * MAX_SEGMENT_CHARS);
        assert_eq!(r.held_back_chars(), MAX_SEGMENT_CHARS);
        assert_eq!(out + &r.finish(), run);
    }

    /// Differential test: random PII-heavy text, random chunking, against batch redaction.
    #[test]
    fn random_streams_match_batch_redaction() {
        const PIECES: &[&str] = &[
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            "123-45-6789",
            "a.b@ex.com",
            "+44 20 7946 0958",
            "(415) 555-2671",
            "10.0.0.1",
            "2001:db8::1",
            " ",
            "  ",
            "\n",
            ",",
            ".",
            "-",
            ":",
            "(",
            ")",
            "@",
            "+",
            "x",
            "Z",
            "7",
            "12",
            "é",
            "AB ",
            "0 ",
            "- ",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n as u64).unwrap_or(0)
        };
        for _ in 0..400 {
            let mut text = String::new();
            for _ in 0..next(40) {
                text.push_str(PIECES[next(PIECES.len())]);
            }
            let mut chunks = Vec::new();
            let mut rest = text.as_str();
            while !rest.is_empty() {
                let mut k = 1 + next(rest.len().min(12));
                while !rest.is_char_boundary(k) {
                    k += 1;
                }
                chunks.push(&rest[..k]);
                rest = &rest[k..];
            }
            let (_, m) = run(OutputAction::Redact, &chunks);
            assert_eq!(m, scan(&text, &OutputPolicy::default().kinds), "{text:?}");
            run(OutputAction::Flag, &chunks);
        }
    }
}
