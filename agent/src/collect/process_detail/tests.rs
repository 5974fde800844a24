//! Process detail against fake /proc trees (exact values) and against this test process
//! and its children (ground truth from std and libc).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

const CLOCK: HostClock = HostClock::new(100, 1_700_000_000, 4096);

/// Writes /proc/PID with the given stat line; status names it as its own thread group.
fn fake_process(root: &Path, pid: u32, stat: &str) -> PathBuf {
    let dir = root.join(pid.to_string());
    fs::create_dir_all(dir.join(format!("task/{pid}"))).unwrap();
    fs::write(dir.join("stat"), stat).unwrap();
    fs::write(dir.join(format!("task/{pid}/stat")), stat).unwrap();
    fs::write(dir.join("status"), format!("Name:\tx\nTgid:\t{pid}\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n"))
        .unwrap();
    dir
}

fn stat_line(pid: u32, comm: &str, state: char, ppid: u32, threads: u32) -> String {
    format!("{pid} ({comm}) {state} {ppid} 1 1 0 -1 0 0 0 0 0 250 50 0 0 20 0 {threads} 0 4200 8192000 300 0 0\n")
}

#[test]
fn fake_process_fields_are_converted_to_protocol_units() {
    let root = tempfile::tempdir().unwrap();
    let dir = fake_process(root.path(), 100, &stat_line(100, "my (app)", 'R', 1, 1));
    fs::write(dir.join("cmdline"), b"/usr/bin/my app\0--flag\0").unwrap();
    fs::write(dir.join("statm"), "2000 300 120 5 0 90 0\n").unwrap();
    fs::write(dir.join("io"), "rchar: 1\nwchar: 2\nread_bytes: 4096\nwrite_bytes: 512\n").unwrap();
    fs::create_dir(dir.join("fd")).unwrap();
    for fd in 0..4 {
        std::os::unix::fs::symlink("/dev/null", dir.join(format!("fd/{fd}"))).unwrap();
    }
    std::os::unix::fs::symlink("/srv/app", dir.join("cwd")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/my app", dir.join("exe")).unwrap();

    let detail = read_process_detail(root.path(), 100, &CLOCK).unwrap();
    assert_eq!((detail.pid, detail.name.as_str(), detail.status.as_str()), (100, "my (app)", "Running"));
    assert_eq!(detail.command, "/usr/bin/my app --flag");
    assert_eq!((detail.mem_bytes, detail.virtual_mem_bytes), (300 * 4096, 8_192_000));
    assert_eq!(detail.shared_mem_bytes, Some(120 * 4096), "statm fallback without RssFile");
    assert_eq!((detail.thread_count, detail.fd_count), (1, Some(4)));
    assert_eq!((detail.parent_pid, detail.user_id, detail.group_id), (Some(1), 1000, 100));
    assert_eq!(detail.start_time, 1_700_000_042);
    assert_eq!((detail.cpu_time_user, detail.cpu_time_system), (2_500_000, 500_000));
    assert_eq!((detail.read_bytes, detail.write_bytes), (Some(4096), Some(512)));
    assert_eq!(detail.working_directory.as_deref(), Some("/srv/app"));
    assert_eq!(detail.executable_path.as_deref(), Some("/usr/bin/my app"));
    assert_eq!(detail.threads.len(), 1);
    assert_eq!((detail.threads[0].tid, detail.threads[0].cpu_time_user), (100, 2_500_000));
    assert!(detail.child_processes.is_empty());
}

#[test]
fn unreadable_optional_files_leave_fields_empty() {
    let root = tempfile::tempdir().unwrap();
    fake_process(root.path(), 7, &stat_line(7, "kworker/0:1", 'I', 2, 1));
    let detail = read_process_detail(root.path(), 7, &CLOCK).unwrap();
    assert_eq!(detail.command, "[kworker/0:1]");
    assert_eq!((detail.fd_count, detail.read_bytes, detail.shared_mem_bytes), (None, None, None));
    assert_eq!((detail.working_directory, detail.executable_path), (None, None));
    assert_eq!(detail.status, "Idle");
}

#[test]
fn children_come_from_children_files_with_unix_start_times() {
    let root = tempfile::tempdir().unwrap();
    let dir = fake_process(root.path(), 10, &stat_line(10, "parent", 'S', 1, 2));
    fs::create_dir(dir.join("task/11")).unwrap();
    fs::write(dir.join("task/11/stat"), stat_line(11, "worker", 'R', 1, 2)).unwrap();
    fs::write(dir.join("task/10/children"), "21 20 ").unwrap();
    fs::write(dir.join("task/11/children"), "22 ").unwrap();
    for child in [20, 21, 22] {
        fake_process(root.path(), child, &stat_line(child, "kid", 'S', 10, 1));
    }
    fake_process(root.path(), 30, &stat_line(30, "not listed in children", 'S', 10, 1));

    let detail = read_process_detail(root.path(), 10, &CLOCK).unwrap();
    let pids: Vec<_> = detail.child_processes.iter().map(|c| c.pid).collect();
    assert_eq!(pids, [20, 21, 22], "the files decide, not a scan");
    assert!(detail.child_processes.iter().all(|c| c.start_time == 1_700_000_042));
    let names: Vec<_> = detail.threads.iter().map(|t| (t.tid, t.name.as_str())).collect();
    assert_eq!(names, [(10, "parent"), (11, "worker")]);
}

#[test]
fn huge_files_under_a_fake_root_are_read_only_up_to_a_cap() {
    let root = tempfile::tempdir().unwrap();
    let dir = fake_process(root.path(), 10, &stat_line(10, "parent", 'S', 1, 1));
    // 10 MB of io: cut at the cap, its first lines still parse.
    let io = format!("read_bytes: 4096\nwrite_bytes: 512\nfill: {}\n", "9".repeat(10_000_000));
    fs::write(dir.join("io"), io).unwrap();
    // A children list longer than the cap, whose cut falls inside a pid: 20, then
    // 12-character fillers up to the cut (they are not processes), then 21.
    let filler = " 99999999999";
    let mut children = String::from("20");
    while (children.len() as u64) < files::MAX_FILE_BYTES - 6 {
        children.push_str(filler);
    }
    children.push_str(" 2100000 21 ");
    fs::write(dir.join("task/10/children"), &children).unwrap();
    fake_process(root.path(), 20, &stat_line(20, "kid", 'S', 10, 1));
    fake_process(root.path(), 21, &stat_line(21, "kid", 'S', 10, 1));
    fake_process(root.path(), 2, &stat_line(2, "not the cut 2100000", 'S', 10, 1));

    let detail = read_process_detail(root.path(), 10, &CLOCK).unwrap();
    assert_eq!((detail.read_bytes, detail.write_bytes), (Some(4096), Some(512)));
    let pids: Vec<_> = detail.child_processes.iter().map(|c| c.pid).collect();
    assert_eq!(pids, [20], "a pid cut by the cap is not read as another pid");
}

#[test]
fn without_children_files_proc_is_scanned_and_vanished_children_skipped() {
    let root = tempfile::tempdir().unwrap();
    fake_process(root.path(), 10, &stat_line(10, "parent", 'S', 1, 1));
    fake_process(root.path(), 12, &stat_line(12, "kid", 'S', 10, 1));
    fake_process(root.path(), 13, &stat_line(13, "other", 'S', 1, 1));
    let gone = fake_process(root.path(), 14, &stat_line(14, "dying", 'S', 10, 1));
    fs::write(root.path().join("stat"), "btime 1\n").unwrap();
    fs::remove_file(gone.join("status")).unwrap();

    let detail = read_process_detail(root.path(), 10, &CLOCK).unwrap();
    let pids: Vec<_> = detail.child_processes.iter().map(|c| c.pid).collect();
    assert_eq!(pids, [12]);
}

#[test]
fn ten_thousand_threads_are_capped() {
    let root = tempfile::tempdir().unwrap();
    let dir = fake_process(root.path(), 5, &stat_line(5, "busy", 'S', 1, 1100));
    for tid in 6..1105 {
        fs::create_dir(dir.join(format!("task/{tid}"))).unwrap();
        fs::write(dir.join(format!("task/{tid}/stat")), stat_line(tid, "w", 'S', 1, 1100)).unwrap();
    }
    fs::write(dir.join("task/5/children"), "").unwrap();
    fake_process(root.path(), 2000, &stat_line(2000, "kid", 'S', 5, 1));

    let detail = read_process_detail(root.path(), 5, &CLOCK).unwrap();
    assert_eq!(detail.thread_count, 1100);
    assert_eq!(detail.threads.len(), MAX_THREADS_LISTED);
    assert_eq!(detail.threads.last().map(|t| t.tid), Some(5 + MAX_THREADS_LISTED as u32 - 1));
    let kids: Vec<_> = detail.child_processes.iter().map(|c| c.pid).collect();
    assert_eq!(kids, [2000], "too many tasks to read each children file: scanned");
}

#[test]
fn missing_or_vanishing_processes_are_not_found() {
    let root = tempfile::tempdir().unwrap();
    assert!(matches!(read_process_detail(root.path(), 42, &CLOCK), Err(DetailError::NotFound(42))));
    let dir = fake_process(root.path(), 43, &stat_line(43, "x", 'S', 1, 1));
    fs::remove_file(dir.join("status")).unwrap();
    assert!(matches!(read_process_detail(root.path(), 43, &CLOCK), Err(DetailError::NotFound(43))));
    let dir = fake_process(root.path(), 44, "");
    assert!(matches!(
        read_process_detail(root.path(), 44, &CLOCK),
        Err(DetailError::Stat { pid: 44, source: crate::host::stat::StatError::NoCommand })
    ));
    fs::write(dir.join("status"), "Tgid:\t40\n").unwrap();
    fs::write(dir.join("stat"), stat_line(44, "thread", 'S', 1, 2)).unwrap();
    assert!(matches!(read_process_detail(root.path(), 44, &CLOCK), Err(DetailError::NotFound(44))), "a TID");
}

// ---- ground truth: this process and its children ----

fn host() -> HostClock {
    HostClock::from_proc(Path::new("/proc")).unwrap()
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn spawn(program: &str, args: &[&str], cwd: &Path) -> Child {
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the child has exec'd its final program (its comm changes at exec).
fn detail_once_named(pid: u32, name: &str) -> ProcessDetail {
    for _ in 0..200 {
        let detail = read_process_detail(Path::new("/proc"), pid, &host()).unwrap();
        if detail.name == name && detail.status == "Sleeping" {
            return detail;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("pid {pid} never became a sleeping {name}");
}

#[test]
fn own_process_matches_std_and_libc() {
    // SAFETY: getrusage only writes the struct it is given.
    let cpu_us = || unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        us(usage.ru_utime) + us(usage.ru_stime)
    };
    let before = cpu_us();
    let detail = read_process_detail(Path::new("/proc"), std::process::id(), &host()).unwrap();
    let after = cpu_us();

    assert_eq!(detail.pid, std::process::id());
    assert_eq!(detail.parent_pid, Some(std::os::unix::process::parent_id()));
    assert_eq!(detail.command, std::env::args().collect::<Vec<_>>().join(" "));
    let exe = std::env::current_exe().unwrap();
    let exe_name = exe.file_name().unwrap().to_string_lossy();
    assert_eq!(detail.name, exe_name[..exe_name.len().min(15)]);
    assert_eq!(detail.executable_path, Some(exe.to_string_lossy().into_owned()));
    assert_eq!(detail.working_directory, Some(std::env::current_dir().unwrap().to_string_lossy().into_owned()));
    let (uid, gid) = (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
    assert_eq!((detail.user_id, detail.group_id), (uid, gid));
    assert!(detail.start_time <= now_unix() && detail.start_time + 600 > now_unix(), "{}", detail.start_time);
    let total = detail.cpu_time_user + detail.cpu_time_system;
    let tick = 1_000_000 / host().ticks_per_second();
    assert!(total + 2 * tick >= before && total <= after + 2 * tick, "{before} <= {total} <= {after}");
    assert!(detail.mem_bytes > 0 && detail.virtual_mem_bytes > detail.mem_bytes);
    assert!(detail.fd_count.is_some_and(|n| n >= 3));
}

#[test]
fn named_threads_of_this_process_are_listed() {
    let (tx, rx) = std::sync::mpsc::channel();
    let release = std::sync::Arc::new(std::sync::Barrier::new(4));
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let (tx, release) = (tx.clone(), release.clone());
            std::thread::Builder::new()
                .name(format!("dprobe-{i}"))
                .spawn(move || {
                    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
                    tx.send((tid, format!("dprobe-{i}"))).unwrap();
                    release.wait();
                })
                .unwrap()
        })
        .collect();
    let mut expected: Vec<(u32, String)> = rx.iter().take(3).collect();
    expected.sort();

    let detail = read_process_detail(Path::new("/proc"), std::process::id(), &host()).unwrap();
    let mut probes: Vec<_> =
        detail.threads.iter().filter(|t| t.name.starts_with("dprobe-")).map(|t| (t.tid, t.name.clone())).collect();
    probes.sort();
    assert_eq!(probes, expected);
    assert!(detail.thread_count as usize >= 4 && detail.threads.len() >= 4);
    let tid = expected[0].0;
    assert!(matches!(read_process_detail(Path::new("/proc"), tid, &host()), Err(DetailError::NotFound(_))));
    release.wait();
    handles.into_iter().for_each(|h| h.join().unwrap());
}

#[test]
fn spawned_children_match_what_we_gave_them() {
    let cwd = tempfile::tempdir().unwrap();
    let cwd_path = fs::canonicalize(cwd.path()).unwrap();
    let spawned_at = now_unix();
    let mut plain = spawn("sleep", &["30"], &cwd_path);
    let mut more_fds = spawn("sh", &["-c", "exec 3</dev/null 4</dev/null 5</dev/null; exec sleep 31"], &cwd_path);
    let a = detail_once_named(plain.id(), "sleep");
    let b = detail_once_named(more_fds.id(), "sleep");

    assert_eq!(a.command, "sleep 30");
    assert_eq!(b.command, "sleep 31");
    assert_eq!(a.parent_pid, Some(std::process::id()));
    assert_eq!(a.working_directory, Some(cwd_path.to_string_lossy().into_owned()));
    let sleep_bin = fs::canonicalize(format!("/proc/{}/exe", plain.id())).unwrap();
    assert_eq!(a.executable_path, Some(sleep_bin.to_string_lossy().into_owned()));
    assert_eq!((a.thread_count, a.threads.len(), a.threads[0].tid), (1, 1, plain.id()));
    // btime is whole seconds, rounded down, so a start can read up to one second early.
    assert!(a.start_time + 1 >= spawned_at && a.start_time <= now_unix(), "{} vs {spawned_at}", a.start_time);
    assert_eq!(b.fd_count.zip(a.fd_count).map(|(b, a)| b - a), Some(3), "three more open files");
    assert!(a.read_bytes.is_some(), "our own child's io is readable");

    let me = read_process_detail(Path::new("/proc"), std::process::id(), &host()).unwrap();
    let kid = me.child_processes.iter().find(|c| c.pid == plain.id()).expect("child listed");
    assert_eq!(kid.start_time, a.start_time, "children carry unix seconds too");
    assert!(me.child_processes.iter().any(|c| c.pid == more_fds.id()));

    for child in [&mut plain, &mut more_fds] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(matches!(read_process_detail(Path::new("/proc"), plain.id(), &host()), Err(DetailError::NotFound(_))));
}

#[test]
fn an_unreaped_child_is_a_zombie_with_a_bracketed_command() {
    let mut child = spawn("true", &[], Path::new("/"));
    let pid = child.id();
    let mut detail = read_process_detail(Path::new("/proc"), pid, &host()).unwrap();
    for _ in 0..200 {
        if detail.status == "Zombie" {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        detail = read_process_detail(Path::new("/proc"), pid, &host()).unwrap();
    }
    assert_eq!(detail.status, "Zombie");
    assert_eq!(detail.command, "[true]");
    assert_eq!((detail.mem_bytes, detail.virtual_mem_bytes), (0, 0));
    child.wait().unwrap();
}

#[test]
fn processes_exiting_during_reads_give_clean_answers() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = Command::new("sh").args(["-c", "true & true & wait"]).status();
            }
        })
    };
    let me = std::process::id();
    for _ in 0..100 {
        let detail = read_process_detail(Path::new("/proc"), me, &host()).unwrap();
        for child in &detail.child_processes {
            match read_process_detail(Path::new("/proc"), child.pid, &host()) {
                Ok(_) | Err(DetailError::NotFound(_)) => {}
                Err(err) => panic!("{err}"),
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
}
