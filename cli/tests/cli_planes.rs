//! Every plane from the environment, end to end across processes: two `planewire serve`
//! workers and the `call`, `discovery` and `events` commands, once on NATS (requests and
//! events) with etcd discovery against a real nats-server and etcd (features `nats` and
//! `etcd`), once on HTTP/2 (feature `http`), and once with no plane variable at all
//! (TCP, file discovery, zmq events). Plus the one-line errors of bad plane settings.
//! Every child runs on 127.0.0.1.

mod common;

use common::planewire_bin;
#[cfg(all(feature = "nats", feature = "etcd"))]
use planewire_testkit::etcd;
use planewire_testkit::nats;

use std::collections::BTreeSet;
#[cfg(all(feature = "nats", feature = "etcd"))]
use std::time::Instant;

use planewire::planes::discovery::{InstanceRecord, Transport};
#[cfg(all(feature = "nats", feature = "etcd"))]
use planewire_bin::{PATIENCE, publisher_id};
use planewire_bin::{Server, Setup, assert_one_error_line, text};

const ENDPOINT: &str = "test/e2e/echo";
const TAGS: [&str; 2] = [" from A", " from B"];

/// Two `serve` workers on [`ENDPOINT`], tagged with [`TAGS`].
fn two_workers(setup: &Setup) -> [Server; 2] {
    TAGS.map(|tag| setup.serve(&["--endpoint", ENDPOINT, "--tag", tag]))
}

/// `call --data hello --count 10` succeeds, every reply is `hello` and a worker's tag,
/// and both workers answered.
fn assert_both_workers_answer(setup: &Setup) {
    let output = setup.output(&[
        "call",
        "--endpoint",
        ENDPOINT,
        "--data",
        "hello",
        "--count",
        "10",
    ]);
    assert!(
        output.status.success(),
        "call failed ({}): {}",
        output.status,
        text(&output.stderr)
    );
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 10, "one line per request: {stdout:?}");
    let mut seen = BTreeSet::new();
    for line in &lines {
        let tag = line
            .strip_prefix("hello")
            .unwrap_or_else(|| panic!("reply {line:?} is not the echo of hello"));
        assert!(TAGS.contains(&tag), "reply {line:?} has an unknown tag");
        seen.insert(tag);
    }
    assert_eq!(seen.len(), 2, "both workers answer: {stdout:?}");
}

/// The latency run (no `--data`): 200 requests, 8 in flight, none failed.
fn assert_latency_run_succeeds(setup: &Setup) {
    let output = setup.output(&[
        "call",
        "--endpoint",
        ENDPOINT,
        "--count",
        "200",
        "--concurrency",
        "8",
    ]);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "latency run failed ({}): {}\n{stdout}",
        output.status,
        text(&output.stderr)
    );
    assert!(
        stdout.contains("requests     200 (0 errors), concurrency 8"),
        "{stdout}"
    );
}

/// The records `discovery list` prints for [`ENDPOINT`], and its raw output.
fn listed(setup: &Setup) -> (Vec<InstanceRecord>, String) {
    let output = setup.output(&["discovery", "list"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let mut records: Vec<InstanceRecord> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("list printed {line:?}, not a record: {e}"))
        })
        .collect();
    records.retain(|r| (r.namespace.as_str(), r.component.as_str()) == ("test", "e2e"));
    (records, stdout)
}

/// Each worker has its record, with the transport its `listening on` line named.
fn assert_records_match(
    records: &[InstanceRecord],
    servers: &[Server],
    expect: fn(&str) -> Transport,
) {
    assert_eq!(records.len(), servers.len(), "{records:?}");
    for server in servers {
        let record = records
            .iter()
            .find(|r| r.instance_id == server.instance)
            .unwrap_or_else(|| panic!("no record for {:x}: {records:?}", server.instance));
        assert_eq!(record.endpoint, "echo");
        assert_eq!(record.transport, expect(&server.address));
    }
}

/// SIGTERM each worker: each exits 0.
fn terminate_all(servers: &mut [Server]) {
    for server in servers {
        let status = server.process.terminate();
        assert!(status.success(), "serve exited with {status}");
    }
}

#[cfg(all(feature = "nats", feature = "etcd"))]
#[test]
fn nats_etcd_planes_across_processes() {
    let Some(nats) = nats::NatsServer::start() else {
        return;
    };
    let Some(etcd) = etcd::Etcd::start() else {
        return;
    };
    let setup = Setup::loopback()
        .env("DYN_REQUEST_PLANE", "nats")
        .env("DYN_DISCOVERY_BACKEND", "etcd")
        .env("DYN_EVENT_PLANE", "nats")
        .env("NATS_SERVER", &nats.url())
        .env("ETCD_ENDPOINTS", &etcd.url());

    let mut servers = two_workers(&setup);
    for server in &servers {
        assert_eq!(
            server.address,
            format!("pw.rq.test.e2e.echo.{}", server.instance_hex()),
            "serve listens on its NATS subject"
        );
    }
    let (records, raw) = listed(&setup);
    assert!(
        raw.contains(r#""transport":{"type":"nats","address":"#),
        "{raw}"
    );
    for server in &servers {
        assert!(
            raw.contains(&format!(r#""address":"{}""#, server.address)),
            "{raw}"
        );
    }
    assert_records_match(&records, &servers, |a| Transport::new("nats", a));

    assert_both_workers_answer(&setup);
    assert_latency_run_succeeds(&setup);

    // Events on NATS: the subscriber sees events from a publisher in another process.
    let mut subscriber = setup.spawn(&[
        "events",
        "subscribe",
        "--endpoint",
        "test/e2e",
        "--topic",
        "t",
        "--count",
        "3",
    ]);
    let deadline = Instant::now() + PATIENCE;
    let mut events: Vec<serde_json::Value> = Vec::new();
    let mut publishers = BTreeSet::new();
    // A subscriber that is not subscribed yet when a run ends would miss it: publish
    // again (at most a few times) until it has its 3 events.
    for _ in 0..4 {
        let publisher = setup.output(&[
            "events",
            "publish",
            "--endpoint",
            "test/e2e",
            "--topic",
            "t",
            "--count",
            "30",
            "--interval",
            "0.05",
        ]);
        assert!(
            publisher.status.success(),
            "publish failed ({}): {}",
            publisher.status,
            text(&publisher.stderr)
        );
        publishers.insert(publisher_id(&publisher));
        while events.len() < 3 {
            let Some(line) =
                subscriber.line_by(Instant::now() + std::time::Duration::from_millis(500))
            else {
                break;
            };
            let event = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("subscribe printed {line:?}, not JSON: {e}"));
            events.push(event);
        }
        if events.len() == 3 || Instant::now() > deadline {
            break;
        }
    }
    assert_eq!(events.len(), 3, "the subscriber printed {events:?}");
    let status = subscriber.wait();
    assert!(
        status.success(),
        "subscribe exits 0 after --count: {status}"
    );
    for event in &events {
        assert_eq!(event["topic"], "t", "{event}");
        assert_eq!(event["payload_len"], 64, "{event}");
        let id = event["publisher_id"].as_str().expect("a publisher id");
        assert!(publishers.contains(id), "{event} from an unknown publisher");
        assert!(event["sequence"].as_u64().is_some(), "{event}");
    }

    terminate_all(&mut servers);
    let (records, raw) = listed(&setup);
    assert!(records.is_empty(), "records left after SIGTERM: {raw}");
    let keys = etcd.etcdctl(&["get", "--prefix", "/services/", "--keys-only"]);
    assert!(keys.trim().is_empty(), "keys left in etcd: {keys}");
}

#[test]
fn default_planes_across_processes() {
    let setup = Setup::loopback().temp_file_kv();
    let mut servers = two_workers(&setup);
    for server in &servers {
        let port = server
            .address
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("listening on {:?}, not 127.0.0.1:PORT", server.address));
        assert_ne!(port, 0);
    }
    let (records, raw) = listed(&setup);
    assert!(raw.contains(r#""transport":{"type":"tcp","#), "{raw}");
    assert_records_match(&records, &servers, |a| Transport::new("tcp", a));
    let dir = setup.file_dir().expect("the file backend's directory");
    assert!(
        std::fs::read_dir(dir)
            .expect("DYN_FILE_KV")
            .next()
            .is_some(),
        "the records live in DYN_FILE_KV"
    );

    assert_both_workers_answer(&setup);
    assert_latency_run_succeeds(&setup);

    terminate_all(&mut servers);
    let (records, raw) = listed(&setup);
    assert!(records.is_empty(), "records left after SIGTERM: {raw}");
}

/// `DYN_REQUEST_PLANE=http`: workers listen on `127.0.0.1:PORT/v1/rpc`, their records
/// say `http`, `call` routes to both through discovery and reaches one by address.
#[cfg(feature = "http")]
#[test]
fn http_plane_across_processes() {
    let setup = Setup::loopback()
        .temp_file_kv()
        .env("DYN_REQUEST_PLANE", "http")
        .env("DYN_HTTP_RPC_HOST", "127.0.0.1")
        .env("DYN_HTTP_RPC_PORT", "0");
    let mut servers = two_workers(&setup);
    for server in &servers {
        let port = server
            .address
            .strip_prefix("127.0.0.1:")
            .and_then(|rest| rest.strip_suffix("/v1/rpc"))
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "listening on {:?}, not 127.0.0.1:PORT/v1/rpc",
                    server.address
                )
            });
        assert_ne!(port, 0);
    }
    let (records, raw) = listed(&setup);
    assert!(raw.contains(r#""transport":{"type":"http","#), "{raw}");
    assert_records_match(&records, &servers, |a| Transport::new("http", a));

    assert_both_workers_answer(&setup);
    assert_latency_run_succeeds(&setup);
    let direct = setup.output(&[
        "call",
        "--endpoint",
        ENDPOINT,
        "--addr",
        &servers[0].address,
        "--data",
        "direct",
    ]);
    assert!(direct.status.success(), "{}", text(&direct.stderr));
    assert_eq!(text(&direct.stdout).trim(), format!("direct{}", TAGS[0]));

    terminate_all(&mut servers);
    let (records, raw) = listed(&setup);
    assert!(records.is_empty(), "records left after SIGTERM: {raw}");
}

#[test]
fn bad_plane_settings_fail_with_one_line() {
    let grpc = Setup::loopback()
        .temp_file_kv()
        .env("DYN_REQUEST_PLANE", "grpc");
    for args in [
        &["call", "--endpoint", ENDPOINT, "--data", "x"][..],
        &["serve", "--endpoint", ENDPOINT],
    ] {
        let output = grpc.output(args);
        let stderr = assert_one_error_line(&output);
        assert!(stderr.contains("DYN_REQUEST_PLANE"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("one of: tcp, nats, http"),
            "{args:?}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    }

    let url = format!("nats://127.0.0.1:{}", nats::free_port());
    let unreachable = Setup::loopback()
        .temp_file_kv()
        .env("DYN_REQUEST_PLANE", "nats")
        .env("NATS_SERVER", &url)
        .env("NATS_CONNECT_TIMEOUT", "1");
    let output = unreachable.output(&["serve", "--endpoint", ENDPOINT]);
    let stderr = assert_one_error_line(&output);
    if cfg!(feature = "nats") {
        assert!(stderr.contains("NATS"), "{stderr}");
        assert!(stderr.contains(&url), "{stderr}");
    } else {
        assert!(stderr.contains("--features nats"), "{stderr}");
    }
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
}
