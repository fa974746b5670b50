//! The benchmark's server side in a process of its own, the topology users run: the
//! measuring process starts `planewire bench-server`, which serves the planewire echo
//! endpoints (TCP, and HTTP/2 in a build with `http`) and the raw floor and prints their
//! addresses, and stops it by its PID.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::BenchError;
use super::cells;
use super::http_plane::HttpEcho;
use super::plane::PlanewireServer;
use super::raw::RawServer;

/// The hidden subcommand the server process runs.
pub const SERVER_SUBCOMMAND: &str = "bench-server";
/// How long the server process may take to start, and to stop once told.
const PATIENCE: Duration = Duration::from_secs(30);

/// The line `bench-server` prints once both servers listen.
#[derive(Serialize, Deserialize)]
struct Addresses {
    planewire: SocketAddr,
    raw: SocketAddr,
    /// The HTTP/2 server's, `host:port/root`, in a build with the `http` feature.
    http: Option<String>,
}

/// A running `bench-server`; killed if dropped without [`stop`](Self::stop).
pub(crate) struct ServerProcess {
    child: Child,
    pid: u32,
    pub planewire: SocketAddr,
    pub raw: SocketAddr,
    pub http: Option<String>,
}

impl ServerProcess {
    /// Starts `exe bench-server` and waits for its addresses.
    pub async fn start(exe: &Path) -> Result<Self, BenchError> {
        let failed = |reason: String| {
            BenchError::Worker(format!(
                "the benchmark's server process ({} {SERVER_SUBCOMMAND}): {reason}",
                exe.display()
            ))
        };
        let mut child = Command::new(exe)
            .arg(SERVER_SUBCOMMAND)
            // Stdin stays open for the server's lifetime: if this process dies, the
            // server reads EOF and exits rather than outlive it.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| failed(format!("cannot start it: {err}")))?;
        let pid = child
            .id()
            .ok_or_else(|| failed("it exited at once".into()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut line);
        match tokio::time::timeout(PATIENCE, read).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => return Err(failed("it exited before printing its addresses".into())),
            Ok(Err(err)) => return Err(failed(format!("reading its output: {err}"))),
            Err(_) => return Err(failed(format!("no addresses within {PATIENCE:?}"))),
        }
        let addresses: Addresses = serde_json::from_str(&line)
            .map_err(|err| failed(format!("it printed {line:?}: {err}")))?;
        Ok(Self {
            child,
            pid,
            planewire: addresses.planewire,
            raw: addresses.raw,
            http: addresses.http,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGTERM to its PID, then waits for it to exit (SIGKILL after [`PATIENCE`]).
    pub async fn stop(mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: kill has no memory preconditions; the PID is our unreaped child's,
            // so it cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pid = self.pid,
                "the benchmark's server process ignored SIGTERM: killing it"
            );
            let _ = self.child.kill().await;
        }
    }
}

/// `planewire bench-server`: the planewire echo server and the raw floor on 127.0.0.1,
/// their addresses as one JSON line on stdout, until SIGTERM or stdin closes.
pub async fn serve() -> Result<(), BenchError> {
    let counts = cells::response_counts();
    let plane = PlanewireServer::start(counts.iter().copied()).await?;
    let raw = RawServer::start().await?;
    let http = HttpEcho::start(&counts).await?;
    let addresses = Addresses {
        planewire: plane.address(),
        raw: raw.address(),
        http: http.address(),
    };
    println!(
        "{}",
        serde_json::to_string(&addresses).expect("addresses serialize")
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(BenchError::io("installing the SIGTERM handler"))?;
    // A thread of its own, not tokio's stdin: that reads on the blocking pool, which the
    // runtime waits for when it shuts down, and this read only ends at EOF.
    let (closed_tx, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 64];
        while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
    });
    tokio::select! {
        _ = terminate.recv() => {}
        _ = stdin_closed => {}
    }
    drop(raw);
    http.shutdown().await;
    plane.shutdown().await;
    Ok(())
}
