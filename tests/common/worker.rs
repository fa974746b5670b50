//! A worker in a child process: `examples/register`, which registers one endpoint and
//! serves it until killed. Killing it with SIGKILL is a crash: no deregistration, the
//! record must go with its lease.

use std::path::PathBuf;
use std::process::Stdio;

use planewire::planes::discovery::InstanceRecord;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use planewire_testkit::within;

pub struct Worker {
    child: Child,
    pub record: InstanceRecord,
}

/// `target/<profile>/examples/register`, built by `cargo test` with the tests.
fn register_example() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test binary> -> target/<profile>/examples/register
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let example = profile_dir
        .join("examples")
        .join(format!("register{}", std::env::consts::EXE_SUFFIX));
    assert!(
        example.exists(),
        "{} is missing: `cargo test` builds it unless the run is limited to some targets; \
         run `cargo build --example register` (with the same features) first",
        example.display()
    );
    example
}

impl Worker {
    /// Starts the worker for `ns/component/endpoint` with `instance_id`, discovery
    /// configured by `env`, and waits for its registration.
    pub async fn start(env: &[(&str, &str)], endpoint: &str, instance_id: u64) -> Self {
        let mut child = Command::new(register_example())
            .arg(endpoint)
            .arg(format!("{instance_id:x}"))
            .env("DYN_TCP_RPC_HOST", "127.0.0.1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start examples/register");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        within("the worker's registration", async {
            BufReader::new(stdout).read_line(&mut line).await
        })
        .await
        .expect("read the worker's output");
        let record: InstanceRecord = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("worker printed {line:?} instead of its record: {e}"));
        Self { child, record }
    }

    /// SIGKILL, by PID, and reap it.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("kill the worker");
        within("the killed worker to exit", self.child.wait())
            .await
            .expect("reap the worker");
    }
}
