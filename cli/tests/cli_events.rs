//! `planewire events` end to end on the default build's event plane (zmq, found through
//! the file discovery backend): separate publisher and subscriber processes on
//! 127.0.0.1, and the one-line errors of bad settings.

mod common;

use common::planewire_bin;

use std::time::{Duration, Instant};

use planewire_bin::{PATIENCE, Setup, assert_one_error_line, publisher_id, text};

#[test]
fn subscribe_prints_a_json_line_per_event_from_another_process() {
    let setup = Setup::file("10");
    let mut subscriber = setup.spawn(&[
        "events",
        "subscribe",
        "--endpoint",
        "test/cli",
        "--topic",
        "kv",
        "--count",
        "5",
    ]);
    // The subscriber joins whenever it has found the publisher: it sees some run of
    // consecutive events, not necessarily the first.
    let publisher = setup.output(&[
        "events",
        "publish",
        "--endpoint",
        "test/cli",
        "--topic",
        "kv",
        "--count",
        "60",
        "--interval",
        "0.05",
        "--size",
        "100",
        "--delay",
        "0.5",
    ]);
    assert!(publisher.status.success(), "{}", text(&publisher.stderr));
    let id = publisher_id(&publisher);
    let deadline = Instant::now() + PATIENCE;
    let lines: Vec<serde_json::Value> = (0..5)
        .map(|_| {
            let line = subscriber.line_by(deadline).expect("an event line");
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
        })
        .collect();
    assert!(
        subscriber.wait().success(),
        "subscribe exits 0 after --count"
    );
    let first = lines[0]["sequence"].as_u64().unwrap();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["publisher_id"], id.as_str(), "{line}");
        assert_eq!(line["sequence"].as_u64(), Some(first + i as u64), "{line}");
        assert_eq!(line["topic"], "kv");
        assert_eq!(line["payload_len"], 100);
        assert!(line["published_at_us"].as_u64().unwrap() > 0);
    }
}

#[test]
fn other_scopes_and_topics_are_not_received() {
    let setup = Setup::file("10");
    let mut subscriber = setup.spawn(&[
        "events",
        "subscribe",
        "--endpoint",
        "test/cli/gen",
        "--topic",
        "kv",
        "--count",
        "1",
    ]);
    for (scope, topic) in [
        ("test/cli", "kv"),
        ("test/cli/gen", "other"),
        ("test/cli/gen", "kv"),
    ] {
        let run = setup.output(&[
            "events",
            "publish",
            "--endpoint",
            scope,
            "--topic",
            topic,
            "--count",
            "20",
            "--interval",
            "0.05",
            "--data",
            scope,
            "--delay",
            "0.5",
        ]);
        assert!(run.status.success(), "{}", text(&run.stderr));
    }
    let line = subscriber
        .line_by(Instant::now() + PATIENCE)
        .expect("one event");
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["topic"], "kv");
    assert_eq!(
        event["payload_len"],
        "test/cli/gen".len(),
        "only its own scope: {line}"
    );
    assert!(subscriber.wait().success());
}

/// Extra environment of one case.
type Vars<'a> = &'a [(&'static str, &'a str)];

#[test]
fn bad_settings_fail_with_one_line() {
    let setup = Setup::file("10");
    let cases: [(Vars, &[&str], &str); 4] = [
        (
            &[("DYN_EVENT_PLANE", "kafka")],
            &["events", "publish", "--endpoint", "a/b", "--topic", "t"],
            "DYN_EVENT_PLANE=\"kafka\": expected one of: zmq, nats, inproc, none",
        ),
        (
            &[("DYN_EVENT_PLANE", "none")],
            &["events", "subscribe", "--endpoint", "a/b", "--topic", "t"],
            "event plane is disabled",
        ),
        (
            &[],
            &[
                "events",
                "subscribe",
                "--endpoint",
                "a/b/c/d",
                "--topic",
                "t",
            ],
            "expected NAMESPACE/COMPONENT or NAMESPACE/COMPONENT/ENDPOINT",
        ),
        (
            &[("DYN_EVENT_SUBSCRIBER_BUFFER", "lots")],
            &["events", "subscribe", "--endpoint", "a/b", "--topic", "t"],
            "DYN_EVENT_SUBSCRIBER_BUFFER",
        ),
    ];
    for (vars, args, expected) in cases {
        let mut command = setup.command(args);
        command.envs(vars.iter().copied());
        let output = command.output().expect("run planewire");
        let stderr = assert_one_error_line(&output);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn disabled_plane_publishes_as_a_no_op() {
    let setup = Setup::file("10").env("DYN_EVENT_PLANE", "none");
    let output = setup.output(&[
        "events",
        "publish",
        "--endpoint",
        "a/b",
        "--topic",
        "t",
        "--count",
        "1000",
        "--linger",
        "0",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn publish_at_interval_zero_never_sleeps() {
    let setup = Setup::file("10");
    let started = Instant::now();
    let output = setup.output(&[
        "events",
        "publish",
        "--endpoint",
        "test/cli",
        "--topic",
        "kv",
        "--count",
        "50000",
        "--delay",
        "0",
        "--linger",
        "0",
    ]);
    let took = started.elapsed();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("published 50000 events in "), "{stderr}");
    // A sleep before each event, however short, costs a timer tick (about 1 ms): 50 s.
    assert!(
        took < Duration::from_secs(20),
        "50,000 events at --interval 0 took {took:?}: {stderr}"
    );
}

#[test]
fn discovery_list_shows_event_publishers_beside_instances() {
    let setup = Setup::file("10");
    let _server = setup.serve(&["--endpoint", "test/cli/echo"]);
    let publisher = setup.spawn(&[
        "events",
        "publish",
        "--endpoint",
        "test/cli",
        "--topic",
        "kv",
        "--count",
        "1000000",
        "--interval",
        "0.1",
        "--delay",
        "0",
    ]);
    let id = publisher
        .next_line()
        .strip_prefix("publisher ")
        .expect("the publisher's id line")
        .to_owned();
    let output = setup.output(&["discovery", "list", "/"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["endpoint"] == "echo"),
        "the instance record: {stdout}"
    );
    let channel = lines
        .iter()
        .find(|l| l["key"] == format!("/event_channels/test/cli/~/{id}").as_str())
        .unwrap_or_else(|| panic!("no record of publisher {id}: {stdout}"));
    assert_eq!(channel["value"]["publisher_id"], id.as_str());
    assert!(
        channel["value"]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("tcp://127.0.0.1:")),
        "{channel}"
    );
}
