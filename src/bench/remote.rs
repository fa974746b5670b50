//! The benchmark's server side in a process of its own, the topology users run: the
//! measuring process starts `planewire bench-server`, which serves the planewire echo
//! endpoints and the raw floor and prints their addresses, and stops it by its PID.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::BenchError;
use super::cells;
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
    io_uring: UringServers,
}

/// The servers on io_uring that `bench --io-uring` measures beside the epoll ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum UringServers {
    /// A build without the `io-uring` feature, or not for Linux.
    NotBuilt,
    /// The kernel refused io_uring; the error says how.
    Refused(String),
    /// The floor's server receiving one read at a time, and by multishot receive.
    Serving {
        raw: SocketAddr,
        raw_multishot: SocketAddr,
    },
}

/// A running `bench-server`; killed if dropped without [`stop`](Self::stop).
pub(crate) struct ServerProcess {
    child: Child,
    pid: u32,
    pub planewire: SocketAddr,
    pub raw: SocketAddr,
    pub io_uring: UringServers,
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
            io_uring: addresses.io_uring,
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
    let plane = PlanewireServer::start(cells::response_counts()).await?;
    let raw = RawServer::start().await?;
    let (io_uring, uring_servers) = start_uring_servers();
    let addresses = Addresses {
        planewire: plane.address(),
        raw: raw.address(),
        io_uring,
    };
    println!(
        "{}",
        serde_json::to_string(&addresses).expect("two addresses serialize")
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
    drop(uring_servers);
    plane.shutdown().await;
    Ok(())
}

/// The io_uring servers, when this build has them and the kernel allows them.
#[cfg(all(feature = "io-uring", target_os = "linux"))]
fn start_uring_servers() -> (UringServers, Vec<super::raw_uring::RawUringServer>) {
    use super::raw_uring::{RawUringServer, Receive};
    let started = RawUringServer::start(Receive::Direct).and_then(|direct| {
        RawUringServer::start(Receive::Multishot).map(|multishot| (direct, multishot))
    });
    match started {
        Ok((direct, multishot)) => (
            UringServers::Serving {
                raw: direct.address(),
                raw_multishot: multishot.address(),
            },
            vec![direct, multishot],
        ),
        Err(err) => (UringServers::Refused(err.to_string()), Vec::new()),
    }
}

#[cfg(not(all(feature = "io-uring", target_os = "linux")))]
fn start_uring_servers() -> (UringServers, Vec<std::convert::Infallible>) {
    (UringServers::NotBuilt, Vec::new())
}
