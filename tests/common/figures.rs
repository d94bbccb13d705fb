//! Figures for the reliability suite's summary table (`tests/suite-report.sh`).
//!
//! A test or bench that measures something the suite reports calls [`figure`]: the value is
//! printed (`FIGURE key = value`, visible with `--nocapture`) and, when the environment names a
//! file in `CLOISTER_SUITE_FIGURES`, appended to it as `key<TAB>value`. The report script reads
//! that file instead of scraping test output, which cargo interleaves across threads.

use std::fmt::Display;
use std::io::Write;

/// Environment variable naming the figures file.
pub const FIGURES_ENV: &str = "CLOISTER_SUITE_FIGURES";

/// Records one figure. Keys are `area.what` (no tabs or newlines); values are one line.
pub fn figure(key: &str, value: impl Display) {
    let value = value.to_string().replace(['\t', '\n'], " ");
    eprintln!("FIGURE {key} = {value}");
    let Some(path) = std::env::var_os(FIGURES_ENV) else {
        return;
    };
    let line = format!("{key}\t{value}\n");
    // One write call per line in append mode: concurrent tests never interleave within a line.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("cannot append to {}: {e}", path.to_string_lossy());
    }
}

/// Records that a check could not run here: a loud message in the test output, and the figure
/// `key` as `SKIPPED: <why>`, which `tests/suite-report.sh` counts as a failed part (a skipped
/// check is no evidence). `unchecked` says what stays unverified.
#[allow(dead_code)] // The load bench includes this file and never skips.
pub fn skipped(key: &str, why: impl Display, unchecked: &str) {
    eprintln!("\n\n*** SKIPPED: {why}. {unchecked} was NOT checked. ***\n\n");
    figure(key, format!("SKIPPED: {why}"));
}
