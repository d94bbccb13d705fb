//! Stop sequences over streamed text.
//!
//! Text that might be the beginning of a stop sequence is held back until it is known not to
//! be, so a stop string is never partly streamed to the client.

/// Incremental stop-sequence matcher.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What to do after a piece of text was pushed.
#[derive(Debug, PartialEq, Eq)]
pub struct StopStep {
    /// Text that can be released now.
    pub emit: String,
    /// A stop sequence was found: generation ends, nothing after it is released.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopStep {
        self.pending.push_str(text);
        if let Some(idx) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let emit = self.pending[..idx].to_string();
            self.pending.clear();
            return StopStep {
                emit,
                stopped: true,
            };
        }
        let hold = self.longest_stop_prefix_suffix();
        let split = self.pending.len() - hold;
        let emit = self.pending[..split].to_string();
        self.pending.drain(..split);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// Releases what was held back at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of some stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let p = &self.pending;
        let mut best = 0;
        for (i, _) in p.char_indices() {
            let suffix = &p[i..];
            if self
                .stops
                .iter()
                .any(|s| s.len() > suffix.len() && s.starts_with(suffix))
            {
                best = best.max(suffix.len());
                break;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let step = m.push(p);
            out.push_str(&step.emit);
            if step.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_never_emitted() {
        assert_eq!(
            run(&["\n\n"], &["Paris.", "\n", "\nThe"]),
            ("Paris.".into(), true)
        );
    }

    #[test]
    fn held_text_is_released_when_it_is_not_a_stop() {
        assert_eq!(
            run(&["END"], &["a E", "N", "x b"]),
            ("a ENx b".into(), false)
        );
    }

    #[test]
    fn earliest_stop_wins_and_unicode_is_safe() {
        assert_eq!(run(&["ö", "b"], &["aébcö"]), ("aé".into(), true));
        assert_eq!(run(&["日本"], &["x日", "本y"]), ("x".into(), true));
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("abc").emit, "abc");
    }
}
