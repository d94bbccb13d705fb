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
