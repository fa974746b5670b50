//! The binary's file discovery under faults (issue 14): files in `DYN_FILE_KV` damaged
//! or planted by hand, and two workers claiming one instance id. Real `planewire`
//! processes on 127.0.0.1, each test with a store of its own; every wait polls a
//! condition with a generous bound.

mod common;

use common::planewire_bin;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use planewire::planes::discovery::Transport;
use planewire_bin::{PATIENCE, Running, Server, Setup, assert_one_error_line, text};

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

/// Reads `watch` lines until an `added` event for instance `id`.
fn wait_for_added(watch: &Running, id: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let line = watch
            .line_by(deadline)
            .unwrap_or_else(|| panic!("no `added` for instance {id:x} from the watch in time"));
        let change: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("watch printed {line:?}, not JSON: {e}"));
        if change["event"] == "added" && change["record"]["instance_id"] == id {
            return;
        }
    }
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
    assert_eq!(records[0].transport, Transport::new("tcp", &first.address));
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
        assert_eq!(records[0].transport, Transport::new("tcp", &server.address));
    }
    let warned = || log_lines(&log, &["WARN", &key, "rewrote"]);
    wait_until("a warning per repair", PATIENCE, || {
        warned() >= damages.len()
    });
    assert_eq!(warned(), damages.len(), "one warning per repair, no more");
    assert!(server.process.terminate().success());
}

/// Item 2: files of every malformed kind planted in `keys/` and `leases/` (garbage,
/// empty, truncated, not UTF-8, bad names, directories, a record on a bad lease) break
/// nothing: a new `serve` starts, `discovery list` and `call` work, a running watch
/// keeps reporting (and logs each bad file at most at its 1st, 2nd, 4th, 8th… scan),
/// and a worker whose own lease file is damaged rewrites it, keeping its lease.
#[test]
fn malformed_files_of_any_kind_break_nothing_and_a_damaged_lease_is_rewritten() {
    let setup = Setup::file(&TTL.to_string()).env("RUST_LOG", "warn");
    let logs = tempfile::tempdir().unwrap();
    let watch_log = logs.path().join("watch.log");
    let watch = setup.spawn_logging_to(&watch_log, &["discovery", "watch"]);
    let root = setup.file_dir().unwrap().to_owned();
    let (keys, leases) = (root.join("keys"), root.join("leases"));
    wait_until("the store's directories", PATIENCE, || {
        keys.is_dir() && leases.is_dir()
    });
    let bad = |name: &str| record_file(&setup, &format!("/services/test/cli/bad/{name}"));
    let valid_json = br#"{"namespace":"test","component":"cli","endpoint":"bad","instance_id":238,"transport":{"type":"tcp","address":"127.0.0.1:9"}}"#;
    let mut on_bad_lease = b"00000000000000ae\n".to_vec();
    on_bad_lease.extend_from_slice(valid_json);
    let planted: Vec<(PathBuf, Vec<u8>)> = vec![
        (bad("garbage"), b"garbage".to_vec()),
        (bad("empty"), Vec::new()),
        (bad("truncated"), b"00000000000000".to_vec()),
        (bad("not-utf8"), b"\xff\xfe\n\x80".to_vec()),
        (bad("bad-json"), b"-\n{not json".to_vec()),
        (bad("ee"), on_bad_lease),
        (keys.join("a name with spaces"), b"-\nv".to_vec()),
        (keys.join(OsStr::from_bytes(b"\xff\xfe")), b"-\nv".to_vec()),
        (
            leases.join("00000000000000ab"),
            b"\xff\xfe not a lease \x80".to_vec(),
        ),
        (leases.join("00000000000000ac"), Vec::new()),
        (leases.join("00000000000000ad"), b"2000 ".to_vec()),
        (leases.join("00000000000000ae"), b"garbage".to_vec()),
        (
            leases.join("not-a-lease"),
            b"2000 99999999999999\n".to_vec(),
        ),
        (leases.join("ab"), b"2000 99999999999999\n".to_vec()),
    ];
    for (path, contents) in &planted {
        std::fs::write(path, contents).unwrap();
    }
    std::fs::create_dir(bad("a-directory")).unwrap();
    std::fs::create_dir(leases.join("00000000000000af")).unwrap();
    let planted_at = Instant::now();

    let mut server = setup.serve(&["--endpoint", "test/cli/bad"]);
    wait_for_added(&watch, server.instance);
    let records = setup.list(None);
    assert_eq!(records.len(), 1, "only the live worker: {records:?}");
    assert_eq!(records[0].instance_id, server.instance);
    let call = setup.output(&["call", "--endpoint", "test/cli/bad", "--data", "fine"]);
    assert!(call.status.success(), "{}", text(&call.stderr));
    assert_eq!(text(&call.stdout), "fine\n");

    // The worker's own lease file, damaged while it runs: its next keep-alive rewrites
    // it under the same id, and its record (which readers meanwhile saw as expired,
    // and may have removed) is written again.
    let record = record_file(&setup, &instance_key("test/cli/bad", &server));
    let lease = lease_of(&record);
    let lease_file = leases.join(&lease);
    write_atomically(&lease_file, b"\x80 damaged");
    let took = wait_until(
        "the damaged lease file rewritten",
        Duration::from_secs(3 * TTL),
        || {
            let lease_ok = std::fs::read(&lease_file).is_ok_and(|b| {
                let t = text(&b);
                let mut f = t.split_whitespace();
                f.next().is_some_and(|ttl| ttl == (TTL * 1000).to_string())
                    && f.next().is_some_and(|e| e.parse::<u64>().is_ok())
            });
            lease_ok && record.exists()
        },
    );
    eprintln!("damaged lease file rewritten, record back, {took:?} after the damage");
    assert_eq!(lease_of(&record), lease, "the worker kept its lease");
    let records = setup.list(None);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].instance_id, server.instance);

    // The watch never stalled: a later worker shows up too.
    let mut later = setup.serve(&["--endpoint", "test/cli/bad"]);
    wait_for_added(&watch, later.instance);
    for (path, _) in planted.iter().filter(|(p, _)| p.starts_with(&leases)) {
        assert!(
            !path.exists()
                || !path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("00"),
            "{} should have been cleaned up as a dead lease",
            path.display()
        );
    }

    // The watcher scans every 200 ms and complains about the misnamed file that stays:
    // at most at scans 1, 2, 4, 8…, so at most log2(scans) + 1 times.
    let scans = planted_at.elapsed().as_millis() / 200 + 1;
    let allowed = (u128::BITS - scans.leading_zeros()) as usize;
    let complaints = log_lines(&watch_log, &["a name with spaces"]);
    assert!(complaints >= 1, "the bad name was never logged");
    assert!(
        complaints <= allowed,
        "{complaints} complaints in about {scans} scans"
    );
    assert!(server.process.terminate().success());
    assert!(later.process.terminate().success());
}
