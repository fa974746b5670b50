//! A real nats-server for tests: on 127.0.0.1 with a free port and a temp dir (its log,
//! its config, its JetStream store), stopped (by PID) on drop. It can be stopped and
//! started again on the same port and store, as an operator restarting NATS would.
//!
//! Without the `nats-server` binary, [`NatsServer::start`] prints a note and returns
//! `None` so the test can skip — except under `CI=true`, where it fails the test.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long nats-server may take to accept connections after starting.
const STARTUP_PATIENCE: Duration = Duration::from_secs(20);

/// What a test needs from the server beyond plain core NATS.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// `-js` with the store in the temp dir.
    pub jetstream: bool,
    /// `max_payload` in bytes (a config file: nats-server has no flag for it).
    pub max_payload: Option<usize>,
    /// `--user` / `--pass`.
    pub user_password: Option<(String, String)>,
}

pub struct NatsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    options: NatsOptions,
}

fn in_ci() -> bool {
    std::env::var("CI")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

impl NatsServer {
    /// Starts core NATS and waits until it accepts connections; `None` if it is not
    /// installed (outside CI).
    pub fn start() -> Option<Self> {
        Self::start_with(NatsOptions::default())
    }

    /// Like [`start`](Self::start), with JetStream enabled.
    pub fn start_jetstream() -> Option<Self> {
        Self::start_with(NatsOptions {
            jetstream: true,
            ..NatsOptions::default()
        })
    }

    pub fn start_with(options: NatsOptions) -> Option<Self> {
        if Command::new("nats-server")
            .arg("--version")
            .output()
            .is_err()
        {
            let message = "the `nats-server` binary is not installed (Debian package \
                           nats-server; scripts/test.sh installs it)";
            assert!(!in_ci(), "{message}: NATS tests cannot be skipped in CI");
            eprintln!("skipping: {message}");
            return None;
        }
        let mut server = Self {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            options,
        };
        // A free port can be taken by another test before nats-server binds it: then
        // nats-server exits at startup, and a fresh port is tried.
        for _ in 0..3 {
            match server.launch() {
                Ok(()) => return Some(server),
                Err(log) if log.contains("address already in use") => {
                    server.port = free_port();
                }
                Err(log) => panic!("nats-server failed to start; log:\n{log}"),
            }
        }
        panic!("nats-server found no free port; log:\n{}", server.log());
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts nats-server and waits until it greets; `Err(log)` if it exits first.
    fn launch(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.path("nats.log"))
            .expect("nats-server log file");
        let mut command = Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.options.jetstream {
            command.arg("-js").arg("-sd").arg(self.path("jetstream"));
        }
        if let Some(max_payload) = self.options.max_payload {
            let config = self.path("nats.conf");
            std::fs::write(&config, format!("max_payload: {max_payload}\n"))
                .expect("write nats-server config");
            command.arg("-c").arg(config);
        }
        if let Some((user, password)) = &self.options.user_password {
            command.args(["--user", user, "--pass", password]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("nats-server log file"))
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits for nats-server's INFO greeting: a bare connect could reach another
    /// listener that took the port first.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_PATIENCE;
        let addr = ([127, 0, 0, 1], self.port).into();
        loop {
            if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut greeting = String::new();
                let _ = BufReader::new(stream).read_line(&mut greeting);
                if greeting.starts_with("INFO") {
                    return Ok(());
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not accept connections within {STARTUP_PATIENCE:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("nats.log")).unwrap_or_default()
    }

    /// Kills nats-server (SIGKILL, by PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts nats-server again on the same port (and JetStream store) after [`stop`](Self::stop).
    pub fn start_again(&mut self) {
        self.stop();
        if let Err(log) = self.launch() {
            panic!("nats-server failed to restart; log:\n{log}");
        }
    }

    /// Publishes `payload` on `subject` as a bare NATS client speaking the text protocol
    /// by hand, so a test can put anything on the wire; returns once the server has
    /// processed it (its PONG to our PING).
    pub fn publish_raw(&self, subject: &str, payload: &[u8]) {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).expect("connect to nats-server");
        stream
            .set_read_timeout(Some(STARTUP_PATIENCE))
            .expect("socket timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone socket"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("INFO from nats-server");
        assert!(line.starts_with("INFO"), "expected INFO, got {line:?}");
        let mut wire = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nPUB {subject} {}\r\n",
            payload.len()
        )
        .into_bytes();
        wire.extend_from_slice(payload);
        wire.extend_from_slice(b"\r\nPING\r\n");
        stream.write_all(&wire).expect("write to nats-server");
        loop {
            line.clear();
            reader.read_line(&mut line).expect("PONG from nats-server");
            assert!(!line.starts_with("-ERR"), "nats-server refused: {line}");
            if line.starts_with("PONG") {
                return;
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
