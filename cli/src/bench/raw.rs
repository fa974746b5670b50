//! The floor: a raw tokio TCP echo with the least protocol that can carry the same work.
//!
//! A request is `u32 LE payload length, u32 LE response count, payload`; the server answers
//! with that many `u32 LE length, payload` messages. Every socket has TCP_NODELAY. The
//! server handles everything it has read before writing, so pipelined requests are
//! answered with one write; payloads of 64 KiB and more are written straight from the read
//! buffer instead of being copied.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::BenchError;
use super::driver::Caller;

const READ_CHUNK: usize = 64 * 1024;
/// Payloads from this size on are written from the read buffer rather than copied.
const WRITE_DIRECT: usize = 64 * 1024;
const SYSTEM: &str = "raw TCP";
/// Connections the floor pipelines over by default.
pub(crate) const PIPELINE_CONNECTIONS: u16 = 1;

/// The raw echo server. Dropping it stops accepting; open connections end with their clients.
pub(crate) struct RawServer {
    address: SocketAddr,
    accept: JoinHandle<()>,
}

impl RawServer {
    pub async fn start() -> Result<Self, BenchError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(BenchError::io("binding the raw TCP floor server"))?;
        let address = listener
            .local_addr()
            .map_err(BenchError::io("reading the raw server's address"))?;
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Err(err) = echo_connection(socket).await {
                        tracing::debug!(%err, "raw echo connection ended");
                    }
                });
            }
        });
        Ok(Self { address, accept })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// The floor's client side, for a [`RawServer`] in this process or another.
pub(crate) struct RawClient {
    pub address: SocketAddr,
    /// Connections a pipelined run spreads its callers over.
    pub connections: usize,
}

impl RawClient {
    async fn connect(&self) -> Result<TcpStream, BenchError> {
        let socket = TcpStream::connect(self.address)
            .await
            .map_err(BenchError::io("connecting to the raw TCP floor server"))?;
        socket
            .set_nodelay(true)
            .map_err(BenchError::io("setting TCP_NODELAY"))?;
        Ok(socket)
    }

    /// One connection, one request at a time: the concurrency-1 floor.
    pub async fn ping_pong(
        &self,
        payload: usize,
        responses: usize,
    ) -> Result<PingPong, BenchError> {
        Ok(PingPong {
            socket: self.connect().await?,
            request: request_bytes(payload, responses),
            reply: vec![0; responses * (4 + payload)],
        })
    }

    /// `concurrency` callers spread evenly over `connections` pipelined connections: on
    /// each, a writer task batches what its callers queue and a reader task completes
    /// them in order.
    pub async fn pipeline(
        &self,
        payload: usize,
        responses: usize,
        concurrency: usize,
        connections: usize,
    ) -> Result<Vec<Pipelined>, BenchError> {
        let connections = connections.clamp(1, concurrency.max(1));
        let request = request_bytes(payload, responses);
        let mut callers = Vec::with_capacity(concurrency);
        for index in 0..connections {
            // This connection's share: the first `concurrency % connections` get one more.
            let share = concurrency / connections + usize::from(index < concurrency % connections);
            let (read, write) = self.connect().await?.into_split();
            let (queue_tx, queue_rx) = mpsc::channel(share);
            // Each caller has at most one request in flight, so `share` slots never fill.
            let (pending_tx, pending_rx) = mpsc::channel(share);
            tokio::spawn(write_pipeline(
                write,
                queue_rx,
                pending_tx,
                request.clone(),
                share,
            ));
            tokio::spawn(read_pipeline(read, pending_rx, responses * (4 + payload)));
            callers.extend((0..share).map(|_| Pipelined {
                queue: queue_tx.clone(),
            }));
        }
        Ok(callers)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn request_bytes(payload: usize, responses: usize) -> Bytes {
    let mut request = BytesMut::with_capacity(8 + payload);
    request.put_u32_le(payload as u32);
    request.put_u32_le(responses as u32);
    request.put_bytes(b'x', payload);
    request.freeze()
}

pub(crate) struct PingPong {
    socket: TcpStream,
    request: Bytes,
    reply: Vec<u8>,
}

impl Caller for PingPong {
    async fn call(&mut self) -> Result<(), BenchError> {
        self.socket
            .write_all(&self.request)
            .await
            .map_err(BenchError::io("raw ping-pong: sending"))?;
        self.socket
            .read_exact(&mut self.reply)
            .await
            .map_err(BenchError::io("raw ping-pong: receiving"))?;
        check_reply(&self.reply, self.request.len() - 8)
    }
}

fn check_reply(reply: &[u8], payload: usize) -> Result<(), BenchError> {
    let len = u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]) as usize;
    if len == payload {
        Ok(())
    } else {
        Err(BenchError::BadResponse {
            system: SYSTEM,
            detail: format!("a {len}-byte message where {payload} bytes were sent"),
        })
    }
}

pub(crate) struct Pipelined {
    queue: mpsc::Sender<oneshot::Sender<()>>,
}

impl Caller for Pipelined {
    async fn call(&mut self) -> Result<(), BenchError> {
        let (done_tx, done_rx) = oneshot::channel();
        let lost = || BenchError::Io {
            context: "raw pipelined connection",
            source: std::io::ErrorKind::ConnectionAborted.into(),
        };
        self.queue.send(done_tx).await.map_err(|_| lost())?;
        done_rx.await.map_err(|_| lost())
    }
}

async fn write_pipeline(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::Receiver<oneshot::Sender<()>>,
    pending: mpsc::Sender<oneshot::Sender<()>>,
    request: Bytes,
    max_batch: usize,
) {
    // `max_batch` copies side by side, made once, so a batch of n is one slice and one write.
    let batch: Vec<u8> = request.repeat(max_batch);
    while let Some(first) = queue.recv().await {
        let mut queued = vec![first];
        while queued.len() < max_batch {
            match queue.try_recv() {
                Ok(next) => queued.push(next),
                Err(_) => break,
            }
        }
        let bytes = &batch[..queued.len() * request.len()];
        for done in queued {
            if pending.send(done).await.is_err() {
                return;
            }
        }
        if write.write_all(bytes).await.is_err() {
            return;
        }
    }
}

async fn read_pipeline(
    read: OwnedReadHalf,
    mut pending: mpsc::Receiver<oneshot::Sender<()>>,
    reply_len: usize,
) {
    let mut read = BufReader::with_capacity(READ_CHUNK, read);
    let mut reply = vec![0; reply_len];
    while let Some(done) = pending.recv().await {
        if read.read_exact(&mut reply).await.is_err() {
            return;
        }
        let _ = done.send(());
    }
}

async fn echo_connection(mut socket: TcpStream) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::with_capacity(READ_CHUNK);
    loop {
        while let Some((responses, payload)) = take_request(&mut input) {
            for _ in 0..responses {
                output.put_u32_le(payload.len() as u32);
                if payload.len() < WRITE_DIRECT {
                    output.put_slice(&payload);
                } else {
                    // What waits and the payload in one vectored write, straight from
                    // the read buffer: two writes would cost a system call and, with
                    // TCP_NODELAY, a segment more per response.
                    let mut both = Buf::chain(&output[..], &payload[..]);
                    socket.write_all_buf(&mut both).await?;
                    output.clear();
                }
            }
        }
        if !output.is_empty() {
            socket.write_all(&output).await?;
            output.clear();
        }
        // Past a request's 8-byte prefix `take_request` has made room for all of it;
        // topping up then would reallocate a buffer sized to that request.
        if input.len() < 8 && input.capacity() - input.len() < READ_CHUNK / 4 {
            input.reserve(READ_CHUNK);
        }
        if socket.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
    }
}

/// Splits one whole request off the front of `input`, or reserves room for the rest of it.
fn take_request(input: &mut BytesMut) -> Option<(u32, Bytes)> {
    if input.len() < 8 {
        return None;
    }
    let len = u32::from_le_bytes([input[0], input[1], input[2], input[3]]) as usize;
    let responses = u32::from_le_bytes([input[4], input[5], input[6], input[7]]);
    if input.len() < 8 + len {
        input.reserve(8 + len - input.len());
        return None;
    }
    input.advance(8);
    Some((responses, input.split_to(len).freeze()))
}
