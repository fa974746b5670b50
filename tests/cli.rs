//! The `planewire` binary end to end: `serve` in a child process on 127.0.0.1, `call`
//! against it, and the errors a user can cause. The benchmark (`bench --quick`) is timing
//! heavy, so `scripts/test.sh` runs it rather than `cargo test`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_planewire");
const PATIENCE: Duration = Duration::from_secs(10);

/// The binary with none of the caller's `DYN_*` settings, so the tests see the defaults.
fn planewire() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DYN_") {
            command.env_remove(name);
        }
    }
    command
}

/// A `planewire serve` child; dropping it kills the process, so a failed test leaves no
/// server behind.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(endpoint: &str, responses: u32) -> Self {
        let child = planewire()
            .args(["serve", "--endpoint", endpoint, "--responses"])
            .arg(responses.to_string())
            .env("DYN_TCP_RPC_HOST", "127.0.0.1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn planewire serve");
        let mut server = Self {
            child,
            address: String::new(),
        };
        let stdout = server.child.stdout.take().expect("piped stdout");
        let (line_tx, line_rx) = mpsc::channel();
        // A reader thread, so a server that never prints fails the test instead of hanging it.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = line_tx.send(line);
        });
        let line = line_rx
            .recv_timeout(PATIENCE)
            .expect("serve printed its address in time");
        server.address = line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        server
    }

    fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for serve") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "serve still running after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(endpoint: &str, address: &str, extra: &[&str]) -> Output {
    planewire()
        .args(["call", "--endpoint", endpoint, "--addr", address])
        .args(extra)
        .output()
        .expect("run planewire call")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A failed command: non-zero exit, exactly one `error: …` line, no panic.
fn assert_one_error_line(output: &Output) -> String {
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[test]
fn call_prints_each_of_k_responses_on_its_own_line() {
    let server = Server::start("test/cli/echo", 3);
    let output = call("test/cli/echo", &server.address, &["--data", "hello"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "hello\nhello\nhello\n");
}

#[test]
fn call_without_data_prints_a_latency_summary() {
    let server = Server::start("test/cli/echo", 1);
    let output = call(
        "test/cli/echo",
        &server.address,
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
    let address = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener.local_addr().expect("local address").to_string()
    };
    let output = call("test/cli/echo", &address, &["--data", "hello"]);
    let stderr = assert_one_error_line(&output);
    assert!(stderr.contains(&address), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn call_to_a_server_that_never_answers_times_out() {
    // Accepts and then says nothing, as a hung worker would.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let address = listener.local_addr().expect("local address").to_string();
    // The accepted socket lives in the thread's result until the handle is dropped.
    let silent = std::thread::spawn(move || listener.accept().map(|(socket, _)| socket));
    let output = planewire()
        .args(["call", "--endpoint", "test/cli/echo", "--addr", &address])
        .args(["--data", "hello"])
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
    let server = Server::start("test/cli/echo", 1);
    let output = call("test/cli/missing", &server.address, &["--data", "hello"]);
    let stderr = assert_one_error_line(&output);
    assert!(stderr.contains("test/cli/missing"), "{stderr}");
}

#[test]
fn call_with_a_malformed_setting_names_the_variable() {
    let output = planewire()
        .args(["call", "--endpoint", "a/b/c", "--addr", "127.0.0.1:9"])
        .args(["--data", "x"])
        .env("DYN_TCP_REQUEST_TIMEOUT", "soon")
        .output()
        .expect("run planewire call");
    let stderr = assert_one_error_line(&output);
    assert!(stderr.contains("DYN_TCP_REQUEST_TIMEOUT"), "{stderr}");
}

#[test]
fn serve_exits_cleanly_on_sigterm() {
    let mut server = Server::start("test/cli/echo", 1);
    let output = call("test/cli/echo", &server.address, &["--data", "before"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let status = server.terminate();
    assert!(status.success(), "serve exited with {status}");
}
