//! A hand-written server that a test scripts frame by frame, for the client's side of the
//! TCP plane's rules (`PROTOCOL.md` §6–§7): the mirror of [`crate::raw`]'s client.

use bytes::BytesMut;
use planewire::codec::{Frame, FrameDecoder, RequestFrame, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One connection of a hand-written server, for a script that reads the client's frames
/// one at a time and writes whatever bytes it likes in between.
pub struct ScriptedConn {
    pub socket: TcpStream,
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl ScriptedConn {
    pub async fn accept(listener: &TcpListener) -> Self {
        let (socket, _) = listener.accept().await.unwrap();
        let decoder = FrameDecoder::new(1 << 20, 1 << 20);
        let buf = decoder.new_buffer();
        Self {
            socket,
            decoder,
            buf,
        }
    }

    /// The next frame the client sent; `None` once it has closed between two frames.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decoder.decode_frame(&mut self.buf).unwrap() {
                return Some(frame);
            }
            // A reset counts as a close: the bytes before it were read.
            if !matches!(self.socket.read_buf(&mut self.buf).await, Ok(n) if n > 0) {
                assert!(
                    self.buf.is_empty(),
                    "the client's last frame was cut: {:?}",
                    self.buf
                );
                return None;
            }
        }
    }

    /// The next frame, which must be a REQUEST.
    pub async fn request(&mut self) -> RequestFrame {
        match self.next_frame().await {
            Some(Frame::Request(req)) => req,
            other => panic!("expected a REQUEST, got {other:?}"),
        }
    }

    /// `bytes` in one write.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).await.unwrap();
    }

    /// Shuts the write side (the server's end-of-stream).
    pub async fn shutdown(&mut self) {
        self.socket.shutdown().await.unwrap();
    }

    /// Every frame the client sends from now until it closes.
    pub async fn rest(mut self) -> Vec<Frame> {
        let mut rest = Vec::new();
        while let Some(frame) = self.next_frame().await {
            rest.push(frame);
        }
        rest
    }
}

/// A hand-written server on a fresh port: `script` gets the listener and accepts what it
/// wants from it. Its task returns what the script returns.
pub async fn script<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
    script: impl FnOnce(TcpListener) -> F,
) -> (String, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (addr, tokio::spawn(script(listener)))
}

/// A hand-written server for one connection: waits for `requests` REQUESTs, writes the
/// bytes `answer` makes of them in one write (then shuts its write side if `then_eof`),
/// and reads until the client closes. Its task returns the frames the client sent after
/// the answer.
pub async fn scripted_server(
    requests: usize,
    then_eof: bool,
    answer: impl FnOnce(&[RequestFrame]) -> Vec<u8> + Send + 'static,
) -> (String, JoinHandle<Vec<Frame>>) {
    script(move |listener| async move {
        let mut conn = ScriptedConn::accept(&listener).await;
        let mut received = Vec::new();
        while received.len() < requests {
            received.push(conn.request().await);
        }
        conn.write(&answer(&received)).await;
        if then_eof {
            conn.shutdown().await;
        }
        conn.rest().await
    })
    .await
}

/// `frames` as one server write.
pub fn wire(frames: Vec<Frame>) -> Vec<u8> {
    let mut wire = BytesMut::new();
    for frame in frames {
        encode_frame(&frame, usize::MAX, &mut wire).unwrap();
    }
    wire.to_vec()
}
