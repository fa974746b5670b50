//! The binary with discovery, end to end: `serve` registers, `call` finds instances
//! without `--addr`, `discovery list|watch` show them, and a worker killed with SIGKILL
//! leaves with its lease. Every child runs on 127.0.0.1 with a discovery store of its
//! test's own (a temp dir, or an etcd started for the test).

mod common;

use common::planewire_bin;
#[cfg(feature = "etcd")]
use planewire_testkit::etcd;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use planewire::planes::discovery::{
    Discovery, DiscoveryBackend, DiscoveryConfig, InstanceRecord, Transport,
};
use planewire::planes::request::PlaneClient;
use planewire::planes::routing::EndpointClient;
use planewire::tcp::TcpClient;
use planewire::tcp::TcpConfig;
use planewire_bin::{PATIENCE, Running, Server, Setup, assert_one_error_line, text};

/// Lease TTL of the expiry tests, in seconds: short, and a whole number so etcd (which
/// counts leases in seconds, at least about 2) honours it exactly.
const SHORT_TTL: u64 = 2;

#[test]
fn serve_registers_and_call_finds_it_without_an_address() {
    let setup = Setup::file("10");
    let mut server = setup.serve(&["--endpoint", "test/cli/echo", "--tag", " from a"]);

    let records = setup.list(None);
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(
        (record.namespace.as_str(), record.component.as_str()),
        ("test", "cli")
    );
    assert_eq!(record.endpoint, "echo");
    assert_eq!(record.instance_id, server.instance);
    assert_eq!(record.transport, Transport::new("tcp", &server.address));
    assert_eq!(setup.list(Some("/services/test/cli/echo/")), records);
    assert!(setup.list(Some("/services/other/")).is_empty());

    let output = setup.output(&["call", "--endpoint", "test/cli/echo", "--data", "hello"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "hello from a\n");
    let direct = setup.output(&[
        "call",
        "--endpoint",
        "test/cli/echo",
        "--instance",
        &server.instance_hex(),
        "--data",
        "direct",
    ]);
    assert!(direct.status.success(), "{}", text(&direct.stderr));
    assert_eq!(text(&direct.stdout), "direct from a\n");

    // A graceful stop deregisters at once, without waiting for the lease.
    let status = server.process.terminate();
    assert!(status.success(), "serve exited with {status}");
    assert!(setup.list(None).is_empty());
}

/// A lease file of bytes that are not even UTF-8 is one bad entry: `serve`, `discovery
/// list` and `call` all go on, and the bad lease counts as expired.
#[test]
fn a_lease_file_that_is_not_utf8_breaks_nothing() {
    let setup = Setup::file("10");
    let leases = setup
        .file_dir()
        .expect("the file backend's directory")
        .join("leases");
    std::fs::create_dir_all(&leases).unwrap();
    std::fs::write(
        leases.join("00000000000000ab"),
        b"\xff\xfe not a lease \x80",
    )
    .unwrap();
    let mut server = setup.serve(&["--endpoint", "test/cli/echo"]);
    let records = setup.list(None);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].instance_id, server.instance);
    let output = setup.output(&["call", "--endpoint", "test/cli/echo", "--data", "still"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "still\n");
    assert!(server.process.terminate().success());
}

#[test]
fn call_with_no_instances_fails_fast_or_waits_for_one() {
    let setup = Setup::file("10");
    for extra in [&["--data", "x"][..], &["--count", "100"]] {
        let start = Instant::now();
        let mut command = setup.command(&["call", "--endpoint", "test/cli/nobody"]);
        let output = command.args(extra).output().expect("run planewire call");
        let stderr = assert_one_error_line(&output);
        assert!(
            stderr.contains("no instances for test/cli/nobody"),
            "{stderr}"
        );
        assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
        assert!(start.elapsed() < PATIENCE / 2, "took {:?}", start.elapsed());
    }
    let wrong = setup.output(&[
        "call",
        "--endpoint",
        "test/cli/nobody",
        "--instance",
        "abc",
        "--wait",
        "0.3",
    ]);
    let stderr = assert_one_error_line(&wrong);
    assert!(stderr.contains("instance abc"), "{stderr}");
    assert!(stderr.contains("waited"), "{stderr}");

    let mut waiting = setup.spawn(&[
        "call",
        "--endpoint",
        "test/cli/late",
        "--data",
        "x",
        "--wait",
        "20",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(waiting.try_wait(), None, "call gave up instead of waiting");
    let _server = setup.serve(&["--endpoint", "test/cli/late", "--tag", " late"]);
    assert_eq!(waiting.next_line(), "x late");
    assert!(waiting.wait().success());
}

#[test]
fn a_killed_worker_leaves_with_its_lease_file() {
    lease_expiry(&Setup::file(&SHORT_TTL.to_string()));
}

#[cfg(feature = "etcd")]
#[test]
fn a_killed_worker_leaves_with_its_lease_etcd() {
    let Some(etcd) = etcd::Etcd::start() else {
        return;
    };
    lease_expiry(&Setup::etcd(&etcd.url(), &SHORT_TTL.to_string()));
}

/// A `serve` child killed with SIGKILL cannot deregister: its record must vanish within
/// the TTL (plus 2 s of slack), from `list` and as `removed` on a running `watch`.
fn lease_expiry(setup: &Setup) {
    let watch = setup.spawn(&["discovery", "watch"]);
    let mut server = setup.serve(&["--endpoint", "test/cli/lease"]);
    let id = server.instance;
    wait_for_change(&watch, "added", id, Instant::now() + PATIENCE);
    assert!(setup.list(None).iter().any(|r| r.instance_id == id));

    server.process.kill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(SHORT_TTL + 2);
    while setup.list(None).iter().any(|r| r.instance_id == id) {
        assert!(
            Instant::now() < deadline,
            "the record outlived its lease by more than 2 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_change(&watch, "removed", id, deadline);
}

/// Reads `watch` lines until `event` for instance `id`; panics at `deadline`.
fn wait_for_change(watch: &Running, event: &str, id: u64, deadline: Instant) {
    loop {
        let Some(line) = watch.line_by(deadline) else {
            panic!("no {event:?} for instance {id:x} from discovery watch in time");
        };
        let change: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("watch printed {line:?}, not JSON: {e}"));
        let record: InstanceRecord = serde_json::from_value(change["record"].clone())
            .unwrap_or_else(|e| panic!("watch printed {line:?} without a record: {e}"));
        if change["event"] == event && record.instance_id == id {
            return;
        }
    }
}

/// Three workers share the load; after one is killed with SIGKILL (its record stays
/// until the lease expires, 10 s here), no call fails: the one that finds it unreachable
/// is retried elsewhere, and it is skipped from then on.
#[test]
fn routing_spreads_calls_and_survives_a_killed_worker() {
    let setup = Setup::file("10");
    let mut servers: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|tag| setup.serve(&["--endpoint", "test/cli/route", "--tag", &format!(" {tag}")]))
        .collect();
    let route = ["call", "--endpoint", "test/cli/route", "--data", "ping"];
    let spread = call_tally(&setup, &route, &["--count", "300", "--concurrency", "3"]);
    for tag in ["a", "b", "c"] {
        assert!(spread.get(tag).is_some_and(|n| *n >= 50), "{spread:?}");
    }

    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (client, tcp) = runtime.block_on(endpoint_client(&setup));
    // Warm: a pooled connection to every worker, so the kill breaks a live one.
    let warm = runtime.block_on(tally_in_process(&client, 30));
    assert_eq!(warm.len(), 3, "{warm:?}");

    servers[2].process.kill();
    let dead = servers.remove(2);
    let killed = dead.instance;
    // A request written before the client has read the dead worker's EOF is lost with
    // the connection, and is not retried (the worker may have run it). Wait, as a
    // frontend between requests would, until the client has seen the connection close.
    let closed = async {
        while tcp.connection_count(&dead.address) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    runtime
        .block_on(async { tokio::time::timeout(PATIENCE, closed).await })
        .expect("the client sees the dead worker's connection close");
    let after = runtime.block_on(tally_in_process(&client, 300));
    assert_eq!(after.get("c"), None, "{after:?}");
    assert_eq!(after.values().sum::<usize>(), 300, "{after:?}");
    assert!(
        client.instance_ids().contains(&killed),
        "lease already gone"
    );
    assert_eq!(client.skipped_instance_ids(), [killed]);

    // A new frontend, finding the dead worker's record still there, fares the same.
    let fresh = call_tally(&setup, &route, &["--count", "300", "--concurrency", "3"]);
    assert_eq!(fresh.get("c"), None, "{fresh:?}");
    assert_eq!(fresh.values().sum::<usize>(), 300, "{fresh:?}");
}

/// Runs `call` (with `--data`), which must succeed; counts its responses by tag.
fn call_tally(setup: &Setup, args: &[&str], extra: &[&str]) -> BTreeMap<String, usize> {
    let mut command = setup.command(args);
    let output = command.args(extra).output().expect("run planewire call");
    assert!(output.status.success(), "{}", text(&output.stderr));
    tally(text(&output.stdout).lines())
}

/// `ping {tag}` responses, counted by tag.
fn tally<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        let tag = line
            .as_ref()
            .strip_prefix("ping ")
            .unwrap_or_else(|| panic!("unexpected response {:?}", line.as_ref()));
        *counts.entry(tag.to_owned()).or_default() += 1;
    }
    counts
}

/// A frontend in this process, on the same file store as the children, and its TCP client.
async fn endpoint_client(setup: &Setup) -> (EndpointClient, Arc<TcpClient>) {
    let config = DiscoveryConfig {
        backend: DiscoveryBackend::File,
        file_dir: setup.file_dir().expect("file backend").to_owned(),
        ..DiscoveryConfig::default()
    };
    let discovery = Discovery::connect(&config)
        .await
        .expect("open the file store");
    let tcp = TcpClient::new(TcpConfig {
        host: Some("127.0.0.1".parse().unwrap()),
        ..TcpConfig::default()
    })
    .expect("tcp client");
    let tcp = Arc::new(tcp);
    let client = EndpointClient::new(
        &discovery,
        "test",
        "cli",
        "route",
        PlaneClient::tcp(Arc::clone(&tcp)),
        Default::default(),
    )
    .await
    .expect("endpoint client");
    (client, tcp)
}

/// `count` calls one after another; every one must succeed.
async fn tally_in_process(client: &EndpointClient, count: usize) -> BTreeMap<String, usize> {
    let mut responses = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream = client
            .call("ping")
            .await
            .unwrap_or_else(|e| panic!("call {i} failed: {e}"));
        let response = stream
            .next()
            .await
            .expect("a response")
            .unwrap_or_else(|e| panic!("call {i} failed: {e}"));
        responses.push(String::from_utf8_lossy(&response).into_owned());
    }
    tally(responses)
}
