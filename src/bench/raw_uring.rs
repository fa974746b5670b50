//! The floor's server on io_uring (`--features io-uring`, Linux only): the echo protocol
//! of [`raw`](super::raw), served by one thread driving one ring, to measure what the
//! kernel's completion interface saves over tokio's epoll with nothing else in the way.
//!
//! Each connection keeps one vectored send and one receive in flight. The receive is
//! either [`Receive::Direct`], one receive at a time straight into the connection's
//! `BytesMut` (no copy, as the epoll floor reads), or [`Receive::Multishot`], one
//! multishot receive that lasts as long as the connection, into buffers the ring picks
//! from a registered buffer ring (then copied into the connection's `BytesMut`, since
//! requests span buffers), so no receive is submitted per read. The operations a completion leads to
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
use io_uring::types::BufRingEntry;
use io_uring::{IoUring, cqueue, opcode, squeue, types};

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

/// Buffers in the registered buffer ring of [`Receive::Multishot`], and their size.
const RING_BUFFERS: u16 = 256;
const RING_BUFFER_SIZE: usize = 32 * 1024;
/// The buffer ring's group id.
const BUFFER_GROUP: u16 = 0;

/// `user_data` of the listener's accept and of the stop signal's read; a connection's
/// operations carry `index << 2 | operation`.
const ACCEPT: u64 = u64::MAX;
const STOP: u64 = u64::MAX - 1;
const OP_RECV: u64 = 0;
const OP_SEND: u64 = 1;
const OP_CANCEL: u64 = 2;

/// How a connection receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Receive {
    /// One receive at a time, into the connection's own buffer.
    Direct,
    /// One multishot receive into the registered buffer ring.
    Multishot,
}

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
    pub fn start(receive: Receive) -> Result<Self, BenchError> {
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
                let event_loop = match EventLoop::new(listener, stop_fd, receive) {
                    Ok(event_loop) => event_loop,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                if let Err(err) = event_loop.run() {
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

/// A buffer ring registered with the kernel: [`RING_BUFFERS`] buffers the kernel picks
/// from for multishot receives, each given back once its bytes are copied out.
struct BufRing {
    entries: *mut BufRingEntry,
    layout: std::alloc::Layout,
    memory: Box<[u8]>,
    tail: u16,
}

impl BufRing {
    fn register(ring: &IoUring) -> io::Result<Self> {
        let size = usize::from(RING_BUFFERS) * std::mem::size_of::<BufRingEntry>();
        // The kernel wants the ring page-aligned.
        let layout = std::alloc::Layout::from_size_align(size, 4096)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout's size is not zero.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut buf_ring = Self {
            entries,
            layout,
            memory: vec![0; usize::from(RING_BUFFERS) * RING_BUFFER_SIZE].into_boxed_slice(),
            tail: 0,
        };
        for bid in 0..RING_BUFFERS {
            buf_ring.give_back(bid);
        }
        // SAFETY: the ring's memory is ours, page-aligned, holds `RING_BUFFERS` entries,
        // and lives until after it is unregistered (`EventLoop::run`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries as u64,
                RING_BUFFERS,
                BUFFER_GROUP,
                0,
            )?;
        }
        Ok(buf_ring)
    }

    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * RING_BUFFER_SIZE;
        &self.memory[start..start + len.min(RING_BUFFER_SIZE)]
    }

    /// Hands buffer `bid` (back) to the kernel.
    fn give_back(&mut self, bid: u16) {
        let index = usize::from(self.tail % RING_BUFFERS);
        let start = usize::from(bid) * RING_BUFFER_SIZE;
        // SAFETY: `index` is inside the ring's allocation; the kernel reads only entries
        // before the published tail, and this one is past it until the store below.
        unsafe {
            let entry = &mut *self.entries.add(index);
            entry.set_addr(self.memory[start..].as_ptr() as u64);
            entry.set_len(RING_BUFFER_SIZE as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lies in the ring's first entry; the kernel reads it
        // with acquire ordering, so the entry written above is visible first.
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast_mut();
            (*tail.cast::<std::sync::atomic::AtomicU16>())
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `register` with this layout, unregistered by now.
        unsafe { std::alloc::dealloc(self.entries.cast(), self.layout) }
    }
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
    /// A queued piece is a slice of `input`: no receive until it is sent, as the epoll
    /// floor does, so `input` gets its allocation back instead of a fresh one (for a
    /// 32 MiB request, a fresh one costs more in page faults than the transfer).
    holds_input: bool,
    iovecs: Box<[libc::iovec; MAX_IOVECS]>,
    receiving: bool,
    /// A cancel of the multishot receive is in flight (output reached the limit).
    cancelling: bool,
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
            holds_input: false,
            iovecs: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOVECS],
            ),
            receiving: false,
            cancelling: false,
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
                    self.holds_input = true;
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
        self.holds_input &= !self.pieces.is_empty();
    }

    fn may_receive(&self) -> bool {
        !self.receiving
            && !self.read_closed
            && !self.failed
            && !self.holds_input
            && self.queued < OUTPUT_LIMIT
    }

    fn may_send(&self) -> bool {
        !self.sending && !self.failed && !self.pieces.is_empty()
    }

    fn finished(&self) -> bool {
        !self.receiving
            && !self.sending
            && !self.cancelling
            && (self.failed || (self.read_closed && self.pieces.is_empty()))
    }

    fn recv_entry(&mut self, index: usize, receive: Receive) -> squeue::Entry {
        self.receiving = true;
        let token = (index as u64) << 2 | OP_RECV;
        if receive == Receive::Multishot {
            return opcode::RecvMulti::new(self.fd(), BUFFER_GROUP)
                .build()
                .user_data(token);
        }
        make_read_room(&mut self.input);
        let fd = self.fd();
        let room = self.input.spare_capacity_mut();
        let len = u32::try_from(room.len()).unwrap_or(u32::MAX);
        opcode::Recv::new(fd, room.as_mut_ptr().cast(), len)
            .build()
            .user_data(token)
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
            .user_data((index as u64) << 2 | OP_SEND)
    }
}

struct EventLoop {
    ring: IoUring,
    receive: Receive,
    /// The registered buffers of [`Receive::Multishot`].
    buf_ring: Option<BufRing>,
    listener: TcpListener,
    stop_fd: RawFd,
    /// Where the stop signal's read lands.
    stop_buf: Box<[u8; 8]>,
    conns: Vec<Option<Conn>>,
    /// Operations submitted and not completed; the loop ends only when none are left, so
    /// no buffer is freed while the kernel may still write to it.
    in_flight: usize,
    stopping: bool,
    completions: Vec<(u64, i32, u32)>,
}

impl EventLoop {
    fn new(listener: TcpListener, stop_fd: RawFd, receive: Receive) -> io::Result<Self> {
        let ring = new_ring()?;
        let buf_ring = match receive {
            Receive::Direct => None,
            Receive::Multishot => Some(BufRing::register(&ring)?),
        };
        Ok(Self {
            ring,
            receive,
            buf_ring,
            listener,
            stop_fd,
            stop_buf: Box::new([0; 8]),
            conns: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            in_flight: 0,
            stopping: false,
            completions: Vec::with_capacity(2 * RING_ENTRIES as usize),
        })
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
                    .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
            );
            for i in 0..self.completions.len() {
                let (token, result, flags) = self.completions[i];
                // A multishot receive stays in flight until a completion without MORE.
                if !cqueue::more(flags) {
                    self.in_flight -= 1;
                }
                self.complete(token, result, flags)?;
            }
        }
        if self.buf_ring.is_some() {
            self.ring.submitter().unregister_buf_ring(BUFFER_GROUP)?;
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

    fn complete(&mut self, token: u64, result: i32, flags: u32) -> io::Result<()> {
        let index = (token >> 2) as usize;
        match token {
            ACCEPT => self.accepted(result),
            STOP => {
                self.stop();
                Ok(())
            }
            _ => match token & 3 {
                OP_SEND => self.on_sent(index, result),
                OP_RECV => self.on_received(index, result, flags),
                _ => {
                    if let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) {
                        conn.cancelling = false;
                    }
                    self.arm(index)
                }
            },
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
                let recv = conn.recv_entry(index, self.receive);
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

    fn on_received(&mut self, index: usize, result: i32, flags: u32) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return Ok(());
        };
        conn.receiving = cqueue::more(flags);
        match (usize::try_from(result), &mut self.buf_ring) {
            (Ok(0), _) => conn.read_closed = true,
            (Ok(n), None) => {
                // SAFETY: the kernel wrote `n` bytes into the spare room the receive was
                // given, which begins at `len()`.
                unsafe { conn.input.set_len(conn.input.len() + n) };
                conn.answer();
            }
            (Ok(n), Some(buf_ring)) => {
                let Some(bid) = cqueue::buffer_select(flags) else {
                    conn.failed = true;
                    return self.arm(index);
                };
                // A deliberate copy: a request may span several ring buffers, and each
                // buffer goes back to the kernel at once.
                conn.input.extend_from_slice(buf_ring.buffer(bid, n));
                buf_ring.give_back(bid);
                conn.answer();
            }
            // Every ring buffer was taken: those are back by now, so receive again.
            (Err(_), Some(_)) if result == -libc::ENOBUFS => {}
            // The receive was cancelled to stop input while output is at its limit.
            (Err(_), _) if result == -libc::ECANCELED && !conn.failed => {}
            (Err(_), _) => conn.failed = true,
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
        let recv = (conn.may_receive() && !conn.cancelling && !self.stopping)
            .then(|| conn.recv_entry(index, self.receive));
        // A multishot receive keeps receiving whatever the output: past the limit it is
        // cancelled, and armed again once the output is below it.
        let cancel = (conn.receiving && !conn.cancelling && conn.queued >= OUTPUT_LIMIT).then(|| {
            conn.cancelling = true;
            opcode::AsyncCancel::new((index as u64) << 2 | OP_RECV)
                .build()
                .user_data((index as u64) << 2 | OP_CANCEL)
        });
        for entry in [send, recv, cancel].into_iter().flatten() {
            self.push(entry)?;
        }
        Ok(())
    }
}
