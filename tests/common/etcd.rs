//! A real etcd for tests: one member on 127.0.0.1 with free client and peer ports and a
//! temp data dir, stopped (by PID) on drop. It can be stopped and started again on the
//! same data dir and ports, as an operator restarting etcd would.
//!
//! Without the `etcd` binary, [`Etcd::start`] prints a note and returns `None` so the
//! test can skip — except under `CI=true`, where it fails the test.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long etcd may take to answer after starting.
const STARTUP_PATIENCE: Duration = Duration::from_secs(20);

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn in_ci() -> bool {
    std::env::var("CI")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

impl Etcd {
    /// Starts etcd and waits until it answers; `None` if it is not installed (outside CI).
    pub fn start() -> Option<Self> {
        if Command::new("etcd").arg("--version").output().is_err() {
            let message = "the `etcd` binary is not installed (Debian package etcd-server; \
                           scripts/test.sh installs it)";
            assert!(!in_ci(), "{message}: etcd tests cannot be skipped in CI");
            eprintln!("skipping: {message}");
            return None;
        }
        let mut etcd = Self {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.launch();
        Some(etcd)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn launch(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let child = Command::new("etcd")
            .args(["--name", "planewire-test"])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("planewire-test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + STARTUP_PATIENCE;
        loop {
            let healthy = self
                .etcdctl_output(&["endpoint", "health"])
                .is_ok_and(|out| out.status.success());
            if healthy {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("etcd exited with {status} at startup; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy within {STARTUP_PATIENCE:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Kills etcd (SIGKILL, by PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn etcdctl_output(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url(), "--dial-timeout", "2s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Runs `etcdctl` against this etcd; panics with its output if it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self
            .etcdctl_output(args)
            .expect("run etcdctl (Debian package etcd-client)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "etcdctl {args:?} failed: {text}");
        text
    }

    /// Creates `root` and `user`, gives `user` read-write on every key, enables auth.
    pub fn enable_auth(&self, user: &str, password: &str) {
        self.etcdctl(&["user", "add", "root", "--new-user-password", "root-secret"]);
        self.etcdctl(&["user", "add", user, "--new-user-password", password]);
        self.etcdctl(&["role", "add", "discovery"]);
        self.etcdctl(&[
            "role",
            "grant-permission",
            "discovery",
            "--prefix=true",
            "readwrite",
            "/",
        ]);
        self.etcdctl(&["user", "grant-role", user, "discovery"]);
        self.etcdctl(&["auth", "enable"]);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
