//! A raw socket that speaks frames by hand, and a process's memory from `/proc`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use planewire::codec::{Frame, FrameDecoder, HeaderMap, RequestFrame, encode_frame};
use planewire::planes::request::EndpointPath;
use planewire::tcp::TcpServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::within;

/// A hand-driven protocol peer, for sending what a well-behaved client never would.
pub struct RawConn {
    pub stream: TcpStream,
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl RawConn {
    pub async fn connect(server: &TcpServer) -> Self {
        raw_connect(&server.local_addr().to_string()).await
    }

    pub async fn send(&mut self, frame: &Frame) {
        let mut wire = BytesMut::new();
        encode_frame(frame, usize::MAX, &mut wire).unwrap();
        self.stream.write_all(&wire).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once the server closed the connection (or reset it).
    pub async fn next_frame(&mut self) -> Option<Frame> {
        self.try_next_frame().await.unwrap_or(None)
    }

    /// The next frame, `Ok(None)` at the server's end-of-stream, or the error a read
    /// returned instead (a reset, say).
    pub async fn try_next_frame(&mut self) -> std::io::Result<Option<Frame>> {
        within("reading a frame", async {
            loop {
                if let Some(frame) = self.decoder.decode_frame(&mut self.buf).unwrap() {
                    return Ok(Some(frame));
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Ok(None);
                }
            }
        })
        .await
    }

    /// Reads until the server closes; returns the frames seen on the way.
    pub async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame().await {
            frames.push(frame);
        }
        frames
    }

    /// Reads until the server's end-of-stream and returns the frames seen on the way;
    /// panics if a read fails instead (a reset), or the close cuts a frame.
    pub async fn until_clean_close(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            match self.try_next_frame().await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => panic!(
                    "reading failed after {} frames: {err} ({:?})",
                    frames.len(),
                    err.kind()
                ),
            }
        }
        assert_eq!(self.leftover(), 0, "the close cut a frame");
        frames
    }

    /// Bytes received after the last whole frame: non-zero at the close means the
    /// server cut a frame.
    pub fn leftover(&self) -> usize {
        self.buf.len()
    }

    /// Grants `increment` more bytes of DATA on `stream_id` (flow control).
    pub async fn grant(&mut self, stream_id: u64, increment: u32) {
        self.send(&Frame::WindowUpdate {
            stream_id,
            increment,
        })
        .await;
    }

    /// Reads until the server closes, as a polite client does: every DATA frame is
    /// granted back at once. Returns the frames seen on the way.
    pub async fn until_closed_granting(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame().await {
            if let Frame::Data { stream_id, payload } = &frame {
                let cost = planewire::codec::window_cost(payload.len());
                // A server that closed before reading this grant is not an error here.
                let _ = self
                    .stream
                    .write_all(&grant_bytes(*stream_id, cost as u32))
                    .await;
            }
            frames.push(frame);
        }
        frames
    }
}

fn grant_bytes(stream_id: u64, increment: u32) -> BytesMut {
    let mut wire = BytesMut::new();
    let frame = Frame::WindowUpdate {
        stream_id,
        increment,
    };
    encode_frame(&frame, usize::MAX, &mut wire).unwrap();
    wire
}

/// Connects a raw peer to `addr` (another process's server).
pub async fn raw_connect(addr: &str) -> RawConn {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let decoder = FrameDecoder::new(64 << 20, 64 << 20);
    RawConn {
        stream,
        buf: decoder.new_buffer(),
        decoder,
    }
}

/// The frames of `stream_id` among `frames`.
pub fn frames_of(frames: &[Frame], stream_id: u64) -> Vec<&Frame> {
    frames
        .iter()
        .filter(|f| f.stream_id() == stream_id && !matches!(f, Frame::GoAway { .. }))
        .collect()
}

pub fn request_frame(stream_id: u64, endpoint: &EndpointPath, payload: &'static [u8]) -> Frame {
    Frame::Request(RequestFrame {
        stream_id,
        path: endpoint.into(),
        headers: HeaderMap::new(),
        payload: Bytes::from_static(payload),
        timeout: None,
    })
}

/// A REQUEST to a path given as text (another process's endpoint), with a deadline.
pub fn request_to(stream_id: u64, path: &str, payload: Bytes, timeout: Option<Duration>) -> Frame {
    Frame::Request(RequestFrame {
        stream_id,
        path: path.to_owned().into(),
        headers: HeaderMap::new(),
        payload,
        timeout,
    })
}

/// Resident memory of process `pid` in bytes (Linux `/proc`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kib * 1024
}
