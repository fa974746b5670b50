//! The `planewire` binary end to end: `serve` in a child process on 127.0.0.1, `call
//! --addr` against it, and the errors a user can cause. Discovery through the binary is
//! in `cli_discovery.rs`. The benchmark (`bench --quick`) is timing heavy, so
//! `scripts/test.sh` runs it rather than `cargo test`.

mod common;

use common::planewire_bin;

use std::net::TcpListener;
use std::process::Output;

use planewire_bin::{Server, Setup, assert_one_error_line, text};

fn serve(setup: &Setup, endpoint: &str, responses: u32) -> Server {
    setup.serve(&[
        "--endpoint",
        endpoint,
        "--responses",
        &responses.to_string(),
    ])
}

/// `call --addr` to `address`, at `instance` if given (otherwise the server's one instance).
fn call(
    setup: &Setup,
    endpoint: &str,
    address: &str,
    instance: Option<&str>,
    extra: &[&str],
) -> Output {
    let mut command = setup.command(&["call", "--endpoint", endpoint, "--addr", address]);
    if let Some(instance) = instance {
        command.args(["--instance", instance]);
    }
    command.args(extra).output().expect("run planewire call")
}

#[test]
fn call_prints_each_of_k_responses_on_its_own_line() {
    let setup = Setup::file("10");
    let server = serve(&setup, "test/cli/echo", 3);
    // The contract form: no --instance, the server's one instance answers.
    let output = call(
        &setup,
        "test/cli/echo",
        &server.address,
        None,
        &["--data", "hello"],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "hello\nhello\nhello\n");
    let instance = server.instance_hex();
    let output = call(
        &setup,
        "test/cli/echo",
        &server.address,
        Some(&instance),
        &["--data", "hi"],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "hi\nhi\nhi\n");
}

#[test]
fn call_without_data_prints_a_latency_summary() {
    let setup = Setup::file("10");
    let server = serve(&setup, "test/cli/echo", 1);
    let output = call(
        &setup,
        "test/cli/echo",
        &server.address,
        None,
        &["--size", "1000", "--count", "200", "--concurrency", "4"],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    for expected in [
        "200 (0 errors)",
        "concurrency 4",
        "p50",
        "p99",
        "max",
        "req/s",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from {stdout}"
        );
    }
}

#[test]
fn call_to_a_port_nobody_listens_on_fails_with_one_line() {
    let setup = Setup::file("10");
    let address = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener.local_addr().expect("local address").to_string()
    };
    let output = call(
        &setup,
        "test/cli/echo",
        &address,
        None,
        &["--data", "hello"],
    );
    let stderr = assert_one_error_line(&output);
    assert!(stderr.contains(&address), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn call_to_a_server_that_never_answers_times_out() {
    let setup = Setup::file("10");
    // Accepts and then says nothing, as a hung worker would.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let address = listener.local_addr().expect("local address").to_string();
    // The accepted socket lives in the thread's result until the handle is dropped.
    let silent = std::thread::spawn(move || listener.accept().map(|(socket, _)| socket));
    let output = setup
        .command(&["call", "--endpoint", "test/cli/echo", "--addr", &address])
        .args(["--instance", "1", "--data", "hello"])
        .env("DYN_TCP_REQUEST_TIMEOUT", "0.3")
        .output()
        .expect("run planewire call");
    let stderr = assert_one_error_line(&output);
    assert!(stderr.contains("timed out"), "{stderr}");
    // Detached, not joined: had the call never connected, `accept` would block forever.
    drop(silent);
}

#[test]
fn call_to_an_unknown_endpoint_names_it() {
    let setup = Setup::file("10");
    let server = serve(&setup, "test/cli/echo", 1);
    let output = call(
        &setup,
        "test/cli/missing",
        &server.address,
        None,
        &["--data", "hello"],
    );
    let stderr = assert_one_error_line(&output);
    assert!(stderr.contains("test/cli/missing"), "{stderr}");
}

#[test]
fn call_with_a_malformed_setting_names_the_variable() {
    let setup = Setup::file("10");
    let output = setup
        .command(&["call", "--endpoint", "a/b/c", "--addr", "127.0.0.1:9"])
        .args(["--instance", "1", "--data", "x"])
        .env("DYN_TCP_REQUEST_TIMEOUT", "soon")
        .output()
        .expect("run planewire call");
    let stderr = assert_one_error_line(&output);
    assert!(stderr.contains("DYN_TCP_REQUEST_TIMEOUT"), "{stderr}");
}

#[test]
fn serve_exits_cleanly_on_sigterm() {
    let setup = Setup::file("10");
    let mut server = serve(&setup, "test/cli/echo", 1);
    let output = call(
        &setup,
        "test/cli/echo",
        &server.address,
        Some(&server.instance_hex()),
        &["--data", "before"],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let status = server.process.terminate();
    assert!(status.success(), "serve exited with {status}");
}

/// `planewire bench-server`, the benchmark's server process: its addresses, once both
/// servers listen.
fn bench_server() -> (std::process::Child, serde_json::Value) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_planewire"))
        .arg("bench-server")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start bench-server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read its addresses");
    let addresses = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    (child, addresses)
}

fn exits_by(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + planewire_bin::PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bench-server still running"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_bench_server_serves_both_floors_and_stops_on_sigterm() {
    use std::io::{Read, Write};
    let (mut child, addresses) = bench_server();
    // The raw floor echoes `u32 length, u32 count, payload` as `count` × `u32 length, payload`.
    let raw = addresses["raw"].as_str().expect("a raw address");
    let mut conn = std::net::TcpStream::connect(raw).unwrap();
    conn.write_all(&[3, 0, 0, 0, 2, 0, 0, 0, b'a', b'b', b'c'])
        .unwrap();
    let mut reply = [0u8; 14];
    conn.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"\x03\x00\x00\x00abc\x03\x00\x00\x00abc");
    // The planewire endpoint answers a call.
    let setup = Setup::loopback();
    let plane = addresses["planewire"]
        .as_str()
        .expect("a planewire address");
    let output = setup.output(&[
        "call",
        "--endpoint",
        "bench/echo/unary",
        "--addr",
        plane,
        "--data",
        "hi",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "hi\n");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(exits_by(&mut child).success());
}

#[test]
fn the_bench_server_exits_when_the_benchmark_is_gone() {
    let (mut child, _) = bench_server();
    // Its stdin closing is what a killed parent process looks like.
    drop(child.stdin.take());
    assert!(exits_by(&mut child).success());
}
