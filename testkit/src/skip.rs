//! Tests that cannot run here: they say so and what they need, and the run ends
//! with one summary of them.
//!
//! Cargo shows a passing test's own output only with `--nocapture`, and reports a
//! test that returned early as passed. So [`skip`] writes its line straight to the
//! process's standard error (past the test harness's capture) and appends it to a
//! file under `target/skipped/` named after the Cargo process that runs the test
//! binaries (the parent of every one of them in a `cargo test` run). The last test
//! binary of `cargo test --workspace` (`xtask/tests/zz_skip_summary.rs`: Cargo runs
//! the packages in name order, a package's test files in name order) prints that
//! file as the summary and removes it.
//!
//! `SOCKTOP_REQUIRE_ALL=1` (CI sets it) turns every skip into a failure: where
//! everything the tests need is installed, a skip is a broken setup.

use std::io::Write as _;
use std::path::PathBuf;

/// The variable that turns skips into failures.
pub const REQUIRE_ALL: &str = "SOCKTOP_REQUIRE_ALL";

/// Whether every test must run (`SOCKTOP_REQUIRE_ALL=1`).
pub fn all_required() -> bool {
    std::env::var(REQUIRE_ALL).is_ok_and(|value| value == "1")
}

/// Records that `test` did not run because it needs `needs` (a Debian package,
/// root, BTF...), or fails it under `SOCKTOP_REQUIRE_ALL=1`. The caller returns
/// after it.
pub fn skip(test: &str, needs: &str) {
    assert!(!all_required(), "{REQUIRE_ALL}=1, but {test} cannot run here: it needs {needs}");
    let line = format!("skipped: {test}: needs {needs}\n");
    // One write, so parallel tests do not interleave inside the line.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(file) = run_file() {
        let _ = std::fs::create_dir_all(file.parent().unwrap_or(&file));
        let appended = std::fs::OpenOptions::new().create(true).append(true).open(&file);
        let _ = appended.and_then(|mut f| f.write_all(line.as_bytes()));
    }
}

/// The name of the running test: the test harness names each test's thread after
/// it (with one test thread the harness may run it on `main`).
pub fn current_test() -> String {
    std::thread::current().name().unwrap_or("a test").to_owned()
}

/// `Some(())` when `program` runs here (`program --version` or the given probe
/// arguments start it); otherwise records the skip of `test` and returns `None`.
pub fn needs_program(test: &str, program: &str, probe: &[&str], package: &str) -> Option<()> {
    let runs = std::process::Command::new(program)
        .args(probe)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if runs {
        Some(())
    } else {
        skip(test, &format!("`{program}` (Debian package {package})"));
        None
    }
}

/// `Some(())` when the tests run as root; otherwise records the skip.
pub fn needs_root(test: &str, why: &str) -> Option<()> {
    if running_as_root() {
        Some(())
    } else {
        skip(test, &format!("root ({why})"));
        None
    }
}

/// Whether this process runs as root (effective user id 0).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The skips of this `cargo test` run so far, and forgets them: the summary's text,
/// or `None` when nothing was skipped.
pub fn take_summary() -> Option<String> {
    let file = run_file()?;
    let lines = std::fs::read_to_string(&file).ok()?;
    let _ = std::fs::remove_file(&file);
    remove_stale(&file);
    Some(summarise(&lines))
}

/// The summary of skip lines (`skipped: TEST: needs WHAT`): a count, then each
/// reason once with the tests it kept from running.
fn summarise(lines: &str) -> String {
    let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut total = 0;
    for line in lines.lines().filter(|l| !l.is_empty()) {
        total += 1;
        let line = line.trim_start_matches("skipped: ");
        let (test, needs) = line.split_once(": needs ").unwrap_or((line, "?"));
        match reasons.iter_mut().find(|(known, _)| *known == needs) {
            Some((_, tests)) => tests.push(test),
            None => reasons.push((needs, vec![test])),
        }
    }
    let mut out = format!("{total} test(s) skipped (set {REQUIRE_ALL}=1 to make skips fail):\n");
    for (needs, tests) in reasons {
        out.push_str(&format!("  needs {needs}:\n    {}\n", tests.join(", ")));
    }
    out
}

/// `target/skipped/<pid of the Cargo process>`: the test binary runs as
/// target/<profile>/deps/NAME-HASH, started by Cargo.
fn run_file() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?.parent()?;
    Some(target.join("skipped").join(std::os::unix::process::parent_id().to_string()))
}

/// Files of runs whose Cargo is gone (stopped by a failure before the summary).
fn remove_stale(file: &std::path::Path) {
    let Some(dir) = file.parent() else { return };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let gone = name.to_str().is_some_and(|pid| !std::path::Path::new("/proc").join(pid).exists());
        if gone {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_lists_each_reason_once_with_its_tests() {
        let lines = "skipped: a: needs root (x)\nskipped: b: needs `strace` (Debian package strace)\n\
                     skipped: c: needs root (x)\n";
        assert_eq!(
            summarise(lines),
            "3 test(s) skipped (set SOCKTOP_REQUIRE_ALL=1 to make skips fail):\n  needs root (x):\n    a, c\n  \
             needs `strace` (Debian package strace):\n    b\n"
        );
    }
}
