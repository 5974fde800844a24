//! The summary of the tests this `cargo test` run skipped, and why (see
//! `testkit::skip`). Cargo runs the workspace's packages in name order and a
//! package's test files in name order, so this file, the last of the last package
//! (`xtask`), runs after every other test binary: keep it the last.

use std::io::Write as _;

#[test]
fn summary_of_the_skipped_tests() {
    // Past the harness's capture, so it shows in every run.
    let summary = testkit::skip::take_summary().unwrap_or_else(|| "no test skipped\n".to_owned());
    let _ = std::io::stderr().write_all(format!("\n{summary}").as_bytes());
}
