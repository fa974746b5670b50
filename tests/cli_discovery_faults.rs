//! The binary's file discovery under faults (issue 14): files in `DYN_FILE_KV` damaged
//! or planted by hand, and two workers claiming one instance id. Real `planewire`
//! processes on 127.0.0.1, each test with a store of its own; every wait polls a
//! condition with a generous bound.

#[path = "common/planewire_bin.rs"]
mod planewire_bin;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use planewire::planes::discovery::Transport;
use planewire_bin::{PATIENCE, Server, Setup, assert_one_error_line, text};

/// Lease TTL in seconds: short, so that repairs made every third of it come quickly.
const TTL: u64 = 2;

/// The record file of `key` (its name escapes every byte outside `[A-Za-z0-9_-]`).
fn record_file(setup: &Setup, key: &str) -> PathBuf {
    let mut name = String::new();
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    setup
        .file_dir()
        .expect("file backend")
        .join("keys")
        .join(name)
}

fn instance_key(endpoint: &str, server: &Server) -> String {
    format!("/services/{endpoint}/{}", server.instance_hex())
}

/// The lease id a record file names in its first line.
fn lease_of(record: &Path) -> String {
    let contents = std::fs::read(record).expect("read the record file");
    let header = contents.split(|b| *b == b'\n').next().unwrap_or_default();
    text(header)
}

/// Replaces `path` as a writer on the same host would: a temp file renamed over it, so a
/// reader never sees half of it.
fn write_atomically(path: &Path, contents: &[u8]) {
    let temp = path.with_file_name(".tmp-test-damage");
    std::fs::write(&temp, contents).expect("write the temp file");
    std::fs::rename(&temp, path).expect("rename it into place");
}

/// Polls `done` every 50 ms until it holds; panics naming `what` after `bound`.
fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Lines of the log at `path` that contain every one of `needles`.
fn log_lines(path: &Path, needles: &[&str]) -> usize {
    let log = text(&std::fs::read(path).unwrap_or_default());
    log.lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .count()
}

/// Item 4: a second `serve --instance 1f` fails, naming the id and the first's lease and
/// address; the first keeps serving, stays listed, and answers after the second is gone.
#[test]
fn a_second_serve_with_a_live_instance_id_fails_and_leaves_the_first_alone() {
    let setup = Setup::file("10");
    let args = ["--endpoint", "test/cli/dup", "--instance", "1f"];
    let mut first = setup.serve(&[&args[..], &["--tag", " first"]].concat());
    let key = instance_key("test/cli/dup", &first);
    let first_lease = lease_of(&record_file(&setup, &key));
    // Shown as etcd tools show lease ids: lowercase hex without leading zeros.
    let shown_lease = first_lease.trim_start_matches('0');

    let second =
        setup.output_within_patience(&[&["serve"][..], &args, &["--tag", " second"]].concat());
    let stderr = assert_one_error_line(&second);
    for part in ["instance 1f", "test/cli/dup", &first.address, shown_lease] {
        assert!(stderr.contains(part), "no {part:?} in {stderr}");
    }
    assert!(
        text(&second.stdout)
            .lines()
            .all(|l| !l.contains("registered")),
        "{}",
        text(&second.stdout)
    );

    let records = setup.list(None);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].transport, Transport::tcp(&first.address));
    assert_eq!(lease_of(&record_file(&setup, &key)), first_lease);
    let call = setup.output(&["call", "--endpoint", "test/cli/dup", "--data", "who"]);
    assert!(call.status.success(), "{}", text(&call.stderr));
    assert_eq!(text(&call.stdout), "who first\n");
    assert!(first.process.terminate().success());
    assert!(
        setup.list(None).is_empty(),
        "the first deregistered its own key"
    );
}

/// Item 3: a live worker's record file damaged by hand, its lease alive, is rewritten by
/// the worker's keep-alive (every TTL/3), with one warning naming the key per repair.
#[test]
fn a_damaged_record_of_a_live_worker_is_rewritten() {
    let setup = Setup::file(&TTL.to_string()).env("RUST_LOG", "warn");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("serve.log");
    let mut server = setup.serve_logging_to(&log, &["--endpoint", "test/cli/heal"]);
    let key = instance_key("test/cli/heal", &server);
    let file = record_file(&setup, &key);
    let intact = std::fs::read(&file).unwrap();
    let damages: [(&str, Vec<u8>); 5] = [
        ("garbage", b"garbage".to_vec()),
        ("empty", Vec::new()),
        ("truncated", intact[..intact.len() - 5].to_vec()),
        ("not UTF-8", b"\xff\xfe\n\x80\x81".to_vec()),
        ("deleted", Vec::new()),
    ];
    for (what, bytes) in &damages {
        if *what == "deleted" {
            std::fs::remove_file(&file).unwrap();
        } else {
            write_atomically(&file, bytes);
        }
        let took = wait_until(
            &format!("the {what} record rewritten"),
            Duration::from_secs(3 * TTL),
            || std::fs::read(&file).is_ok_and(|now| now == intact),
        );
        eprintln!("{what} record rewritten {took:?} after the damage (TTL {TTL} s)");
        let records = setup.list(None);
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].transport, Transport::tcp(&server.address));
    }
    let warned = || log_lines(&log, &["WARN", &key, "rewrote"]);
    wait_until("a warning per repair", PATIENCE, || {
        warned() >= damages.len()
    });
    assert_eq!(warned(), damages.len(), "one warning per repair, no more");
    assert!(server.process.terminate().success());
}
