//! The floor's server on io_uring (`--features io-uring`, Linux only): the echo protocol
//! of [`raw`](super::raw), served by one thread driving one ring, to measure what the
//! kernel's completion interface saves over tokio's epoll with nothing else in the way.
//!
//! Each connection keeps one receive in flight, straight into its `BytesMut` (no copy, as
//! the epoll floor reads), and one vectored send. The operations a completion leads to
//! are queued and reach the kernel with the next wait, in one `io_uring_enter`: at
//! concurrency 1 a request costs the server one system call (send the answer, receive
//! the next request, sleep), where epoll takes four (`epoll_wait`, `read`, `write`, and
//! the `read` that finds nothing). The ring is set up single-issuer with deferred task
//! work, so completions are processed only when this thread asks for them.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::thread::JoinHandle;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use io_uring::{IoUring, opcode, squeue, types};

use super::BenchError;
use super::raw::{READ_CHUNK, WRITE_DIRECT, make_read_room, take_request};

/// Submission queue entries; completions get twice as many. Each connection has at most
/// two operations in flight, so [`MAX_CONNECTIONS`] of them fit with room to spare.
const RING_ENTRIES: u32 = 256;
/// Connections served at once; more are closed as they are accepted.
const MAX_CONNECTIONS: usize = 64;
/// iovecs per vectored send.
const MAX_IOVECS: usize = 64;
/// Output a connection may have queued before it stops receiving: a peer that sends
/// without reading cannot make the server buffer without bound.
const OUTPUT_LIMIT: usize = 4 << 20;

/// `user_data` of the listener's accept and of the stop signal's read; a connection's
/// operations carry `index << 1 | is_send`.
const ACCEPT: u64 = u64::MAX;
const STOP: u64 = u64::MAX - 1;

/// The raw echo server on io_uring. Dropping it stops the ring's thread, which closes
/// every connection.
pub(crate) struct RawUringServer {
    address: SocketAddr,
    /// An eventfd the ring's thread reads: writing to it stops the thread.
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl RawUringServer {
    /// Binds 127.0.0.1 and starts the ring's thread; an error if the kernel refuses
    /// io_uring (too old, or `kernel.io_uring_disabled` set).
    pub fn start() -> Result<Self, BenchError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(BenchError::io("binding the raw io_uring floor server"))?;
        let address = listener
            .local_addr()
            .map_err(BenchError::io("reading the raw io_uring server's address"))?;
        // SAFETY: eventfd has no memory preconditions; a non-negative result is a new
        // descriptor that nothing else owns.
        let stop = unsafe {
            let fd = libc::eventfd(0, libc::EFD_CLOEXEC);
            if fd < 0 {
                return Err(
                    BenchError::io("creating the raw io_uring server's eventfd")(
                        io::Error::last_os_error(),
                    ),
                );
            }
            OwnedFd::from_raw_fd(fd)
        };
        let stop_fd = stop.as_raw_fd();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("raw-io_uring".into())
            .spawn(move || {
                // A single-issuer ring belongs to the thread that made it.
                let ring = match new_ring() {
                    Ok(ring) => ring,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                if let Err(err) = EventLoop::new(ring, listener, stop_fd).run() {
                    tracing::warn!(%err, "the raw io_uring floor server stopped");
                }
            })
            .map_err(BenchError::io("starting the raw io_uring server's thread"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                return Err(BenchError::io(
                    "setting up an io_uring (io_uring_setup) for the raw io_uring floor",
                )(err));
            }
            Err(_) => {
                return Err(BenchError::Worker(
                    "the raw io_uring server's thread ended while starting".into(),
                ));
            }
        }
        Ok(Self {
            address,
            stop,
            thread: Some(thread),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for RawUringServer {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local buffer to the eventfd we own.
        unsafe {
            libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), one.len());
        }
        // The thread reads the eventfd, which must stay open until it has stopped.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn new_ring() -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(RING_ENTRIES)
}

/// One served connection. The buffers an operation in flight points into (`input`'s
/// spare room, the `pieces`' bytes, `iovecs`) are not touched until it completes, and
/// the connection is dropped only when nothing of it is in flight.
struct Conn {
    socket: TcpStream,
    input: BytesMut,
    /// Small answers, flattened into one piece per receive.
    output: BytesMut,
    /// Answers waiting to be sent, in order; `queued` bytes in all.
    pieces: VecDeque<Bytes>,
    queued: usize,
    iovecs: Box<[libc::iovec; MAX_IOVECS]>,
    receiving: bool,
    sending: bool,
    /// The peer closed its side: no more receives, what is queued still goes out.
    read_closed: bool,
    /// An operation failed: nothing more is done.
    failed: bool,
}

impl Conn {
    fn new(socket: TcpStream) -> Self {
        Self {
            socket,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: BytesMut::with_capacity(READ_CHUNK),
            pieces: VecDeque::new(),
            queued: 0,
            iovecs: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOVECS],
            ),
            receiving: false,
            sending: false,
            read_closed: false,
            failed: false,
        }
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.socket.as_raw_fd())
    }

    /// Answers every whole request received, as the epoll floor does: small payloads
    /// copied into one piece, large ones sent from the receive buffer.
    fn answer(&mut self) {
        while let Some((responses, payload)) = take_request(&mut self.input) {
            for _ in 0..responses {
                self.output.put_u32_le(payload.len() as u32);
                if payload.len() < WRITE_DIRECT {
                    self.output.put_slice(&payload);
                } else {
                    self.queue_output();
                    self.queue(payload.clone());
                }
            }
        }
        self.queue_output();
    }

    fn queue_output(&mut self) {
        if !self.output.is_empty() {
            let piece = self.output.split().freeze();
            self.queue(piece);
        }
    }

    fn queue(&mut self, piece: Bytes) {
        self.queued += piece.len();
        self.pieces.push_back(piece);
    }

    /// Drops the first `sent` bytes of the queued answers.
    fn sent(&mut self, mut sent: usize) {
        self.queued -= sent;
        while sent > 0 {
            let Some(front) = self.pieces.front_mut() else {
                return;
            };
            if front.len() > sent {
                front.advance(sent);
                return;
            }
            sent -= front.len();
            self.pieces.pop_front();
        }
    }

    fn may_receive(&self) -> bool {
        !self.receiving && !self.read_closed && !self.failed && self.queued < OUTPUT_LIMIT
    }

    fn may_send(&self) -> bool {
        !self.sending && !self.failed && !self.pieces.is_empty()
    }

    fn finished(&self) -> bool {
        !self.receiving
            && !self.sending
            && (self.failed || (self.read_closed && self.pieces.is_empty()))
    }

    fn recv_entry(&mut self, index: usize) -> squeue::Entry {
        make_read_room(&mut self.input);
        let fd = self.fd();
        let room = self.input.spare_capacity_mut();
        let len = u32::try_from(room.len()).unwrap_or(u32::MAX);
        self.receiving = true;
        opcode::Recv::new(fd, room.as_mut_ptr().cast(), len)
            .build()
            .user_data((index as u64) << 1)
    }

    fn send_entry(&mut self, index: usize) -> squeue::Entry {
        let mut count = 0;
        for (iovec, piece) in self.iovecs.iter_mut().zip(&self.pieces) {
            *iovec = libc::iovec {
                iov_base: piece.as_ptr().cast_mut().cast(),
                iov_len: piece.len(),
            };
            count += 1;
        }
        self.sending = true;
        opcode::Writev::new(self.fd(), self.iovecs.as_ptr(), count)
            .build()
            .user_data((index as u64) << 1 | 1)
    }
}

struct EventLoop {
    ring: IoUring,
    listener: TcpListener,
    stop_fd: RawFd,
    /// Where the stop signal's read lands.
    stop_buf: Box<[u8; 8]>,
    conns: Vec<Option<Conn>>,
    /// Operations submitted and not completed; the loop ends only when none are left, so
    /// no buffer is freed while the kernel may still write to it.
    in_flight: usize,
    stopping: bool,
    completions: Vec<(u64, i32)>,
}

impl EventLoop {
    fn new(ring: IoUring, listener: TcpListener, stop_fd: RawFd) -> Self {
        Self {
            ring,
            listener,
            stop_fd,
            stop_buf: Box::new([0; 8]),
            conns: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            in_flight: 0,
            stopping: false,
            completions: Vec::with_capacity(2 * RING_ENTRIES as usize),
        }
    }

    fn run(mut self) -> io::Result<()> {
        let accept = self.accept_entry();
        self.push(accept)?;
        let stop = opcode::Read::new(types::Fd(self.stop_fd), self.stop_buf.as_mut_ptr(), 8)
            .build()
            .user_data(STOP);
        self.push(stop)?;
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is full: drain it below, then submit again.
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {}
                Err(err) => return Err(err),
            }
            self.completions.clear();
            self.completions.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result())),
            );
            self.in_flight -= self.completions.len();
            for i in 0..self.completions.len() {
                let (token, result) = self.completions[i];
                self.complete(token, result)?;
            }
        }
        Ok(())
    }

    /// Queues `entry`; when the submission queue is full, what it holds goes first.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY: every entry points into memory that outlives the operation: the
        // connection's buffers (see `Conn`), or the event loop's own boxes, which are
        // dropped only after `run` has seen every operation complete.
        while unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.ring.submit()?;
        }
        self.in_flight += 1;
        Ok(())
    }

    fn accept_entry(&self) -> squeue::Entry {
        opcode::Accept::new(
            types::Fd(self.listener.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(ACCEPT)
    }

    fn complete(&mut self, token: u64, result: i32) -> io::Result<()> {
        match token {
            ACCEPT => self.accepted(result),
            STOP => {
                self.stop();
                Ok(())
            }
            _ => {
                let index = (token >> 1) as usize;
                if token & 1 == 1 {
                    self.on_sent(index, result)
                } else {
                    self.on_received(index, result)
                }
            }
        }
    }

    fn accepted(&mut self, result: i32) -> io::Result<()> {
        if self.stopping {
            return Ok(());
        }
        if result >= 0 {
            // SAFETY: a successful accept returns a new descriptor that only we own.
            let socket = unsafe { TcpStream::from_raw_fd(result) };
            let _ = socket.set_nodelay(true);
            // No free slot: `socket` is dropped, which closes the connection.
            if let Some(index) = self.conns.iter().position(Option::is_none) {
                let conn = self.conns[index].insert(Conn::new(socket));
                let recv = conn.recv_entry(index);
                self.push(recv)?;
            }
        } else {
            let err = io::Error::from_raw_os_error(-result);
            tracing::debug!(%err, "raw io_uring accept failed");
        }
        let accept = self.accept_entry();
        self.push(accept)
    }

    /// Shuts every socket down, which completes the operations in flight on them, and
    /// arms nothing new: the loop ends when the last completion is in.
    fn stop(&mut self) {
        self.stopping = true;
        // A listening socket shut down fails its pending accept.
        // SAFETY: shutdown has no memory preconditions; the descriptor is our listener's.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        for conn in self.conns.iter_mut().flatten() {
            conn.failed = true;
            let _ = conn.socket.shutdown(Shutdown::Both);
        }
    }

    fn on_received(&mut self, index: usize, result: i32) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return Ok(());
        };
        conn.receiving = false;
        match usize::try_from(result) {
            Ok(0) => conn.read_closed = true,
            Ok(n) => {
                // SAFETY: the kernel wrote `n` bytes into the spare room the receive was
                // given, which begins at `len()`.
                unsafe { conn.input.set_len(conn.input.len() + n) };
                conn.answer();
            }
            Err(_) => conn.failed = true,
        }
        self.arm(index)
    }

    fn on_sent(&mut self, index: usize, result: i32) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return Ok(());
        };
        conn.sending = false;
        match usize::try_from(result) {
            Ok(0) | Err(_) => conn.failed = true,
            Ok(n) => conn.sent(n),
        }
        self.arm(index)
    }

    /// Queues the connection's next send and receive, or frees it once it is done.
    fn arm(&mut self, index: usize) -> io::Result<()> {
        let Some(conn) = self.conns[index].as_mut() else {
            return Ok(());
        };
        if conn.finished() {
            self.conns[index] = None;
            return Ok(());
        }
        let send = conn.may_send().then(|| conn.send_entry(index));
        let recv = (conn.may_receive() && !self.stopping).then(|| conn.recv_entry(index));
        for entry in [send, recv].into_iter().flatten() {
            self.push(entry)?;
        }
        Ok(())
    }
}
