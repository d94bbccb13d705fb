//! Input and output content guards.
//!
//! # Input guard ([`injection`])
//! Before a prompt reaches the chat template, [`injection::check_input`] enforces the tenant's
//! length and control-character limits (a hard reject, HTTP 400) and then scores the text for
//! prompt injection. Caught, after NFKC normalisation, removal of zero-width/bidi/tag
//! characters and folding of Cyrillic/Greek look-alikes:
//! - instruction overrides ("ignore/disregard (all) previous instructions", "forget everything
//!   above", "new instructions:"), also when letter-spaced or punctuated;
//! - role hijacks ("you are now", DAN / "do anything now", developer/god mode, "no restrictions");
//! - system-prompt exfiltration ("reveal/print your (system) prompt", "repeat the words above");
//! - chat-template forgery in user text (`<|im_start|>system`, `<|im_end|>`, `<|system|>`,
//!   `[INST]`, `<<SYS>>`, `### System:`);
//! - base64 runs that decode to text which itself scores (two levels deep);
//! - obfuscation itself: zero-width characters inside Latin words, mixed-script words, Unicode
//!   tag characters (invisible ASCII).
//!
//! The guard is defence in depth, not the boundary: the server never interpolates user text into
//! the system prompt, and the tokenizer must not turn user text into special tokens.
//!
//! # Output guard ([`pii`], [`stream`])
//! Emails, phone numbers (E.164 and NANP), payment cards (IIN range + length + Luhn), IBANs
//! (country length + mod-97), US SSNs (area/group/serial rules), IPv4 and IPv6 addresses, each
//! validated to keep false positives down, then flagged or replaced by `[REDACTED:<KIND>]`.
//! [`stream::StreamRedactor`] gives byte-identical results on token streams while holding back
//! at most [`pii::MAX_SEGMENT_CHARS`] characters.
//!
//! # Known limits
//! These are heuristics, not a classifier. Paraphrases ("pay no attention to what you were told
//! earlier"), other languages, leetspeak, instructions split across turns or hidden in documents
//! the model retrieves are not caught; developers asking *about* chat tokens score low but
//! nonzero. PII spelled out in words, split by unusual separators, lowercase IBANs, SSNs without
//! dashes, bare 10-digit phone numbers, non-ASCII (e.g. fullwidth) digits and national ids other
//! than the US SSN are not detected; four-part version numbers ("1.2.3.4", but not "v1.2.3.4")
//! are redacted as IPv4 addresses, because they cannot be told apart.
//!
//! # Why decisions carry [`policy::POLICY_VERSION`]
//! Scores depend on the exact pattern set and weights, which will change. Recording the version
//! with every decision lets an auditor reproduce a block or a redaction, compare flag rates
//! across rule changes, and tell a regression from a change in traffic. Signals carry pattern
//! ids and weights only, never the matched user text, so the log does not copy prompts.

pub mod injection;
pub mod pii;
pub mod policy;
pub mod stream;

use regex::Regex;

/// Compiles one of the guard's literal patterns.
///
/// Every pattern is a compile-time constant, and tests (`every_pattern_compiles` in each
/// module) force every `LazyLock` that calls this; a failure here is a programmer error in a
/// literal, never a consequence of input, so it panics rather than returning an error.
#[allow(clippy::expect_used)]
pub(crate) fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).expect("guard patterns are valid literal regexes")
}
