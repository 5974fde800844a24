//! The verifier's reason for refusing a program, picked out of its log.
//!
//! The log replays the instructions the verifier walked, with register states and
//! source lines, prints its reason for stopping, then a statistics line
//! (`processed 81 insns (limit 1000000) ...`). The last line of the log is that
//! statistics line, which says nothing; an operator needs the reason, e.g.
//! `Type 'atomic_long_t' is not a struct` or `perf_event programs can only use
//! preallocated hash map`. Warnings may come earlier (`trace type programs with
//! run-time allocated hash maps are unsafe`), so the reason is the last message
//! before the statistics.

/// The verifier's reason in `log`: the last line before the statistics that is a
/// message rather than a trace of the walk; None when there is none.
pub fn reason(log: &str) -> Option<&str> {
    log.lines().map(str::trim_end).take_while(|line| !is_statistics(line)).filter(|line| is_message(line)).last()
}

/// The closing lines: `processed N insns ...`, `verification time ...`, `stack depth ...`.
fn is_statistics(line: &str) -> bool {
    ["processed ", "verification time ", "stack depth "].iter().any(|prefix| line.starts_with(prefix))
}

/// Whether `line` says something rather than replaying the walk.
fn is_message(line: &str) -> bool {
    let line_trimmed = line.trim_start();
    if line_trimmed.is_empty() || line_trimmed.len() != line.len() {
        // Indented lines continue a register or stack dump.
        return false;
    }
    // `115: (79) r1 = *(u64 *)(r1 +1024)`, `0: R1=ctx() R10=fp0`: an instruction or
    // the state at one.
    if let Some((number, _)) = line.split_once(": ")
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
    {
        return false;
    }
    // `R1_w=scalar()`, `R0=inv(id=0)`: a register's state. (`R3 invalid mem access`
    // is a message.)
    if let Some(rest) = line.strip_prefix('R') {
        let register = rest.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next().unwrap_or("");
        if rest[register.len()..].starts_with('=') {
            return false;
        }
    }
    const TRACE_PREFIXES: [&str; 14] = [
        "; ",
        "from ",
        "func#",
        "last_idx ",
        "regs=",
        "parent ",
        "mark_precise",
        "frame",
        "caller:",
        "callee:",
        "propagating",
        "Live regs",
        "Validating ",
        "returning from callee",
    ];
    !TRACE_PREFIXES.iter().any(|prefix| line.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_the_message_before_the_statistics() {
        let log = "\
func#0 @0
0: R1=ctx(off=0,imm=0) R10=fp0
; let (meta, task) = unsafe {
0: (79) r6 = *(u64 *)(r1 +8)
1: R1=ctx(off=0,imm=0) R6_w=ptr_task_struct(off=0,imm=0) R10=fp0
115: (79) r1 = *(u64 *)(r1 +1024)
Type 'atomic_long_t' is not a struct
processed 81 insns (limit 1000000) max_states_per_insn 0 total_states 5 peak_states 5 mark_read 2
";
        assert_eq!(reason(log), Some("Type 'atomic_long_t' is not a struct"));
    }

    #[test]
    fn an_earlier_warning_is_not_the_reason() {
        let log = "\
trace type programs with run-time allocated hash maps are unsafe. Switch to preallocated hash maps.
perf_event programs can only use preallocated hash map
processed 0 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
";
        assert_eq!(reason(log), Some("perf_event programs can only use preallocated hash map"));
    }

    #[test]
    fn linux_5_10_refusing_resync_for_the_map_allocated_on_demand() {
        // The whole log of `resync` on Debian's 5.10.0-46 before `resync_prealloc`.
        let log = "\
perf_event programs can only use preallocated hash map
verification time 204 usec
stack depth 0
processed 0 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
";
        assert_eq!(reason(log), Some("perf_event programs can only use preallocated hash map"));
    }

    #[test]
    fn a_register_message_is_a_reason_but_its_state_is_not() {
        let log = "\
12: (61) r2 = *(u32 *)(r3 +0)
R3 invalid mem access 'scalar'
verification time 25 usec
stack depth 0
processed 13 insns (limit 1000000) max_states_per_insn 0 total_states 1 peak_states 1 mark_read 1
";
        assert_eq!(reason(log), Some("R3 invalid mem access 'scalar'"));
        assert_eq!(reason("R1_w=ctx() R10=fp0\n   frame1: R1=1\nprocessed 2 insns\n"), None);
    }

    #[test]
    fn no_log_no_reason() {
        assert_eq!(reason(""), None);
        assert_eq!(reason("processed 0 insns (limit 1000000)\n"), None);
    }
}
