//! The `planewire` binary in child processes on 127.0.0.1, each test with a discovery
//! store of its own. Every child is killed (by PID) when its guard drops, so a failed
//! test leaves no process behind.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use planewire::planes::discovery::InstanceRecord;

const BIN: &str = env!("CARGO_BIN_EXE_planewire");
/// Upper bound on waits for a child: a hang fails the test instead of blocking it.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The environment of one test's children: loopback, and where discovery lives.
pub struct Setup {
    vars: Vec<(&'static str, String)>,
    /// Holds the file backend's directory until the test ends.
    dir: Option<tempfile::TempDir>,
}

impl Setup {
    /// The file backend in a fresh directory, with leases of `ttl` seconds.
    pub fn file(ttl: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut setup = Self::with_backend("file", ttl);
        let path = dir.path().to_str().expect("UTF-8 temp dir").to_owned();
        setup.vars.push(("DYN_FILE_KV", path));
        setup.dir = Some(dir);
        setup
    }

    /// etcd at `url`, with leases of `ttl` seconds.
    pub fn etcd(url: &str, ttl: &str) -> Self {
        let mut setup = Self::with_backend("etcd", ttl);
        setup.vars.push(("ETCD_ENDPOINTS", url.to_owned()));
        setup
    }

    /// Only loopback hosts for the TCP request plane and the zmq event plane: every
    /// plane takes its default unless [`env`](Self::env) or
    /// [`temp_file_kv`](Self::temp_file_kv) says otherwise.
    pub fn loopback() -> Self {
        Self {
            vars: vec![
                ("DYN_TCP_RPC_HOST", "127.0.0.1".to_owned()),
                ("DYN_EVENT_PLANE_HOST", "127.0.0.1".to_owned()),
            ],
            dir: None,
        }
    }

    /// Points `DYN_FILE_KV` at a fresh directory (the file backend's store, should the
    /// file backend be the one selected), held until the test ends.
    pub fn temp_file_kv(mut self) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_str().expect("UTF-8 temp dir").to_owned();
        self.vars.push(("DYN_FILE_KV", path));
        self.dir = Some(dir);
        self
    }

    fn with_backend(backend: &str, ttl: &str) -> Self {
        Self {
            vars: vec![
                ("DYN_TCP_RPC_HOST", "127.0.0.1".to_owned()),
                ("DYN_EVENT_PLANE_HOST", "127.0.0.1".to_owned()),
                ("DYN_DISCOVERY_BACKEND", backend.to_owned()),
                ("DYN_DISCOVERY_LEASE_TTL", ttl.to_owned()),
            ],
            dir: None,
        }
    }

    /// Adds `name=value` to the children's environment.
    pub fn env(mut self, name: &'static str, value: &str) -> Self {
        self.vars.push((name, value.to_owned()));
        self
    }

    /// The file backend's directory.
    pub fn file_dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    /// `planewire ARGS` with this environment and none of the caller's `DYN_*`, `ETCD_*`
    /// or `NATS_*` settings.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if ["DYN_", "ETCD_", "NATS_"]
                .iter()
                .any(|p| name_text.starts_with(p))
            {
                command.env_remove(&name);
            }
        }
        command
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        command
    }

    /// Runs `planewire ARGS` to the end.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run planewire")
    }

    pub fn spawn(&self, args: &[&str]) -> Running {
        Running::spawn(self.command(args))
    }

    /// Like [`spawn`](Self::spawn), with stderr read by the test instead of shown.
    pub fn spawn_capturing_stderr(&self, args: &[&str]) -> Running {
        Running::spawn_with_stderr(self.command(args), Stdio::piped())
    }

    /// `planewire serve ARGS`, once it printed its address and instance id.
    pub fn serve(&self, args: &[&str]) -> Server {
        let mut command = self.command(&["serve"]);
        command.args(args);
        Server::start(Running::spawn(command))
    }

    /// Like [`spawn`](Self::spawn), with the child's stderr (its log) written to `log`.
    pub fn spawn_logging_to(&self, log: &std::path::Path, args: &[&str]) -> Running {
        let file = std::fs::File::create(log).expect("create the child's log file");
        Running::spawn_with_stderr(self.command(args), file.into())
    }

    /// Like [`serve`](Self::serve), with the child's stderr (its log) written to `log`.
    pub fn serve_logging_to(&self, log: &std::path::Path, args: &[&str]) -> Server {
        let mut full = vec!["serve"];
        full.extend_from_slice(args);
        Server::start(self.spawn_logging_to(log, &full))
    }

    /// Runs `planewire ARGS` to the end, as [`output`](Self::output) does, but kills the
    /// child (by PID) and panics if it is still running after [`PATIENCE`]: for commands
    /// that must fail, where a bug would make them run forever instead.
    pub fn output_within_patience(&self, args: &[&str]) -> Output {
        let dir = tempfile::tempdir().expect("temp dir");
        let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let file = |path: &std::path::Path| std::fs::File::create(path).expect("output file");
        let mut child = self
            .command(args)
            .stdout(file(&out_path))
            .stderr(file(&err_path))
            .spawn()
            .expect("spawn planewire");
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "planewire {args:?} still running after {PATIENCE:?}; stdout: {}; stderr: {}",
                    text(&std::fs::read(&out_path).unwrap_or_default()),
                    text(&std::fs::read(&err_path).unwrap_or_default())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: std::fs::read(&out_path).expect("read stdout"),
            stderr: std::fs::read(&err_path).expect("read stderr"),
        }
    }

    /// Like [`serve`](Self::serve), in a process allowed `max_files` open descriptors.
    #[cfg(target_os = "linux")]
    pub fn serve_with_file_limit(&self, max_files: u64, args: &[&str]) -> Server {
        use std::os::unix::process::CommandExt;
        let mut command = self.command(&["serve"]);
        command.args(args);
        let limit = libc::rlimit {
            rlim_cur: max_files,
            rlim_max: max_files,
        };
        // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else
        // between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Server::start(Running::spawn(command))
    }

    /// `planewire discovery list [PREFIX]`, parsed.
    pub fn list(&self, prefix: Option<&str>) -> Vec<InstanceRecord> {
        let mut args = vec!["discovery", "list"];
        args.extend(prefix);
        let output = self.output(&args);
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stdout)
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("list printed {line:?}, not a record: {e}"))
            })
            .collect()
    }
}

/// A child whose stdout lines arrive on a channel, read by a thread so that a child that
/// prints nothing fails the test instead of hanging it.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Stderr lines, when captured ([`Setup::spawn_capturing_stderr`]).
    errors: Option<mpsc::Receiver<String>>,
}

/// Sends each line `from` reads to the returned channel, from a thread of its own.
fn line_channel(from: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (line_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

impl Running {
    fn spawn(command: Command) -> Self {
        Self::spawn_with_stderr(command, Stdio::inherit())
    }

    fn spawn_with_stderr(mut command: Command, stderr: Stdio) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn planewire");
        let lines = line_channel(child.stdout.take().expect("piped stdout"));
        let errors = child.stderr.take().map(line_channel);
        Self {
            child,
            lines,
            errors,
        }
    }

    /// The next stderr line, as [`line_by`](Self::line_by) for stdout. Panics unless
    /// stderr was captured.
    pub fn stderr_line_by(&self, deadline: Instant) -> Option<String> {
        let errors = self.errors.as_ref().expect("stderr captured");
        let left = deadline.saturating_duration_since(Instant::now());
        errors.recv_timeout(left).ok()
    }

    /// Resident and peak resident memory in bytes (`VmRSS`, `VmHWM` of Linux `/proc`).
    #[cfg(target_os = "linux")]
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc status of the child");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} in /proc status"))
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The next stdout line, or `None` if none came by `deadline` or the child closed
    /// its stdout.
    pub fn line_by(&self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(left).ok()
    }

    pub fn next_line(&self) -> String {
        self.line_by(Instant::now() + PATIENCE)
            .expect("a line from the child in time")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time the child has used so far (Linux `/proc`).
    #[cfg(target_os = "linux")]
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("/proc stat of the child");
        // Fields after the parenthesised command name; utime and stime are the 14th and
        // 15th fields of the whole line.
        let rest = &stat[stat.rfind(')').expect("command name in /proc stat") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Sends `kill -SIGNAL PID`.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Still running, or its exit status.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for the child")
    }

    /// Waits up to [`PATIENCE`] for the child to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "child still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait()
    }

    /// SIGKILL: a crash, with no chance to deregister.
    pub fn kill(&mut self) {
        self.signal("KILL");
        self.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `planewire serve` child.
pub struct Server {
    pub process: Running,
    pub address: String,
    pub instance: u64,
}

impl Server {
    fn start(process: Running) -> Self {
        let line = process.next_line();
        let address = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let line = process.next_line();
        let instance = line
            .strip_prefix("instance ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .unwrap_or_else(|| panic!("unexpected second line {line:?}"));
        Self {
            process,
            address,
            instance,
        }
    }

    /// The instance id as the command line takes it.
    pub fn instance_hex(&self) -> String {
        format!("{:x}", self.instance)
    }
}

/// The publisher id `planewire events publish` prints first (`publisher HEX`).
pub fn publisher_id(output: &Output) -> String {
    let stdout = text(&output.stdout);
    stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("publisher "))
        .unwrap_or_else(|| panic!("publish printed {stdout:?}"))
        .to_owned()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A failed command: non-zero exit, exactly one `error: …` line, no panic.
pub fn assert_one_error_line(output: &Output) -> String {
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
