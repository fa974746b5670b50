//! The binary's file discovery under faults (issue 14): files in `DYN_FILE_KV` damaged
//! or planted by hand, and two workers claiming one instance id. Real `planewire`
//! processes on 127.0.0.1, each test with a store of its own; every wait polls a
//! condition with a generous bound.

#[path = "common/planewire_bin.rs"]
mod planewire_bin;

use std::path::{Path, PathBuf};

use planewire::planes::discovery::Transport;
use planewire_bin::{Server, Setup, assert_one_error_line, text};

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
