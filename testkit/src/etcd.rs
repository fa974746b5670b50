//! A real etcd for tests: one member on 127.0.0.1 with free client and peer ports and a
//! temp data dir, stopped (by PID) on drop. It can be stopped and started again on the
//! same data dir and ports, as an operator restarting etcd would.
//!
//! Without the `etcd` binary, [`Etcd::start`] prints a note and returns `None` so the
//! test can skip — except under `CI=true`, where it fails the test.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long etcd may take to answer after starting.
const STARTUP_PATIENCE: Duration = Duration::from_secs(20);

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<TlsFiles>,
}

/// PEM files of a throwaway CA, etcd's server certificate (for 127.0.0.1) and a client
/// certificate, all signed by the CA.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Made with the `openssl` command; `None` (after a note) if it is missing.
    fn generate(dir: &Path) -> Option<Self> {
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("skipping: the `openssl` command is not installed");
            return None;
        }
        let path = |name: &str| dir.join(name);
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=planewire test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        for (name, extensions) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(path(&format!("{name}.ext")), extensions).expect("write extensions");
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        Some(Self {
            ca: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
            client_cert: path("client.pem"),
            client_key: path("client.key"),
        })
    }
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
        Self::start_with(false)
    }

    /// Like [`start`](Self::start), serving clients over TLS only and requiring client
    /// certificates; `None` also when `openssl` is missing.
    pub fn start_tls() -> Option<Self> {
        Self::start_with(true)
    }

    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    fn start_with(tls: bool) -> Option<Self> {
        if Command::new("etcd").arg("--version").output().is_err() {
            let message = "the `etcd` binary is not installed (Debian package etcd-server; \
                           scripts/test.sh installs it)";
            assert!(!in_ci(), "{message}: etcd tests cannot be skipped in CI");
            eprintln!("skipping: {message}");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = if tls {
            Some(TlsFiles::generate(dir.path())?)
        } else {
            None
        };
        let mut etcd = Self {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
        };
        etcd.launch();
        Some(etcd)
    }

    /// `http://127.0.0.1:PORT`, or `https://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
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
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
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
        let mut command = Command::new("etcdctl");
        if let Some(tls) = &self.tls {
            command
                .arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        command
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
