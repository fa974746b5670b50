//! One ZMTP connection's read side, and the handshake that opens it: the byte layouts
//! are [`zmtp`](super::zmtp)'s, the policy (what to queue, drop, retry) the publisher's
//! and subscriber's.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::zmtp::{
    Command, FLAG_COMMAND, FLAG_LONG, FLAG_MORE, GREETING_LEN, Incoming, MAX_COMMAND, MAX_FRAMES,
    READ_CHUNK, SocketType, ZERO_COPY_FROM, ZmtpError, check_greeting, check_ready, greeting,
    parse_command, protocol, ready,
};

/// Greets the peer, checks its greeting and exchanges READY commands, announcing
/// `ours`. Returns the connection's two halves; messages the peer sent right after its
/// READY wait in the reader. Bytes from the network are never trusted: every field is
/// checked and a mismatch is a [`ZmtpError::Protocol`] naming it.
pub(super) async fn handshake(
    stream: TcpStream,
    ours: SocketType,
    max_message: usize,
) -> Result<(Reader<OwnedReadHalf>, OwnedWriteHalf), ZmtpError> {
    let (mut read, mut write) = stream.into_split();
    write.write_all(&greeting()).await?;
    let mut theirs = [0u8; GREETING_LEN];
    read.read_exact(&mut theirs).await?;
    check_greeting(&theirs)?;
    write.write_all(&ready(ours)).await?;
    let mut reader = Reader::new(read, max_message);
    match reader.next().await? {
        Incoming::Command(Command::Ready(body)) => check_ready(&body, ours)?,
        Incoming::Command(Command::Error(reason)) => {
            return Err(protocol(format!(
                "the peer refused the handshake: {reason}"
            )));
        }
        other => return Err(protocol(format!("expected READY, got {other:?}"))),
    }
    Ok((reader, write))
}

/// Reads frames into messages, within bounds whatever the peer sends: a message over
/// `max_message` bytes or [`MAX_FRAMES`] frames is read past and reported as
/// [`Incoming::Discarded`]. Cancel-safe: everything read is kept in `self`, so a
/// `next()` dropped before it finishes loses nothing (the subscriber polls it with
/// `now_or_never` to batch wake-ups).
pub(super) struct Reader<R> {
    io: R,
    buf: BytesMut,
    max_message: usize,
    /// Frames of the message being read, and their total size.
    frames: Vec<Bytes>,
    size: usize,
    /// Why the message being read will be discarded; its frames are skipped.
    discard: Option<String>,
    /// Body bytes still to skip, and whether more frames follow that body.
    skip: Option<(usize, bool)>,
    /// A large frame read straight into a buffer of its own: the buffer, its full
    /// length, and whether more frames follow.
    large: Option<(BytesMut, usize, bool)>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(io: R, max_message: usize) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            max_message,
            frames: Vec::new(),
            size: 0,
            discard: None,
            skip: None,
            large: None,
        }
    }

    /// The next message or command.
    pub(super) async fn next(&mut self) -> Result<Incoming, ZmtpError> {
        loop {
            if let Some(incoming) = self.parse()? {
                return Ok(incoming);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<(), ZmtpError> {
        let read = match &mut self.large {
            Some((body, len, _)) => {
                let mut limited = (&mut self.io).take((*len - body.len()) as u64);
                limited.read_buf(body).await?
            }
            None => {
                if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                    self.buf.reserve(READ_CHUNK);
                }
                self.io.read_buf(&mut self.buf).await?
            }
        };
        if read == 0 {
            let mid_message = !self.frames.is_empty()
                || self.discard.is_some()
                || self.large.is_some()
                || self.skip.is_some()
                || !self.buf.is_empty();
            return Err(ZmtpError::Closed { mid_message });
        }
        Ok(())
    }

    /// Takes what the buffer holds: a whole message or command, or `None` if more
    /// bytes are needed.
    fn parse(&mut self) -> Result<Option<Incoming>, ZmtpError> {
        loop {
            if let Some((body, len, more)) = self.large.take() {
                if body.len() < len {
                    self.large = Some((body, len, more));
                    return Ok(None);
                }
                if let Some(message) = self.frame_done(Some(body.freeze()), more) {
                    return Ok(Some(message));
                }
                continue;
            }
            if let Some((left, more)) = self.skip.take() {
                let n = left.min(self.buf.len());
                self.buf.advance(n);
                if n < left {
                    self.skip = Some((left - n, more));
                    return Ok(None);
                }
                if let Some(message) = self.frame_done(None, more) {
                    return Ok(Some(message));
                }
                continue;
            }
            let Some((header_len, flags, len)) = self.header()? else {
                return Ok(None);
            };
            let more = flags & FLAG_MORE != 0;
            if flags & FLAG_COMMAND != 0 {
                if more {
                    return Err(protocol("a command frame with the MORE flag"));
                }
                if !self.frames.is_empty() || self.discard.is_some() {
                    return Err(protocol("a command inside a multi-frame message"));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|len| *len <= MAX_COMMAND)
                    .ok_or_else(|| {
                        protocol(format!("a {len}-byte command (the limit is {MAX_COMMAND})"))
                    })?;
                if self.buf.len() < header_len + len {
                    self.buf.reserve(header_len + len - self.buf.len());
                    return Ok(None);
                }
                let body = Bytes::copy_from_slice(&self.buf[header_len..header_len + len]);
                self.buf.advance(header_len + len);
                return Ok(Some(Incoming::Command(parse_command(body)?)));
            }
            let fits = usize::try_from(len)
                .ok()
                .filter(|len| self.size.saturating_add(*len) <= self.max_message);
            let keep = fits.filter(|_| self.discard.is_none() && self.frames.len() < MAX_FRAMES);
            let Some(len) = keep else {
                self.buf.advance(header_len);
                if self.discard.is_none() {
                    self.discard = Some(if fits.is_none() {
                        format!(
                            "a message over the {}-byte limit (a {len}-byte frame after {} bytes)",
                            self.max_message, self.size
                        )
                    } else {
                        format!("a message of more than {MAX_FRAMES} frames")
                    });
                }
                // A size beyond what memory can address is skipped as far as it goes;
                // the connection ends long before that anyway.
                self.skip = Some((usize::try_from(len).unwrap_or(usize::MAX), more));
                continue;
            };
            if len >= ZERO_COPY_FROM {
                self.buf.advance(header_len);
                self.size += len;
                let mut body = BytesMut::with_capacity(len);
                let have = len.min(self.buf.len());
                body.put_slice(&self.buf[..have]);
                self.buf.advance(have);
                self.large = Some((body, len, more));
                continue;
            }
            if self.buf.len() < header_len + len {
                self.buf.reserve(header_len + len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(header_len);
            self.size += len;
            let body = Bytes::copy_from_slice(&self.buf[..len]);
            self.buf.advance(len);
            if let Some(message) = self.frame_done(Some(body), more) {
                return Ok(Some(message));
            }
        }
    }

    /// The next frame header's length, flags and body size, if the buffer holds it.
    fn header(&self) -> Result<Option<(usize, u8, u64)>, ZmtpError> {
        let Some(&flags) = self.buf.first() else {
            return Ok(None);
        };
        if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
            return Err(protocol(format!(
                "frame flags {flags:#04x} set reserved bits"
            )));
        }
        if flags & FLAG_LONG != 0 {
            let Some(size) = self.buf.get(1..9) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(size.try_into().expect("8 bytes"));
            Ok(Some((9, flags, len)))
        } else {
            Ok(self.buf.get(1).map(|&len| (2, flags, u64::from(len))))
        }
    }

    /// Ends one frame (`None`: skipped); returns the message if it was the last one.
    fn frame_done(&mut self, body: Option<Bytes>, more: bool) -> Option<Incoming> {
        if let Some(body) = body {
            self.frames.push(body);
        }
        if more {
            return None;
        }
        self.size = 0;
        let frames = std::mem::take(&mut self.frames);
        Some(match self.discard.take() {
            Some(reason) => Incoming::Discarded(reason),
            None => Incoming::Message(frames),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planes::events::zmq::zmtp::put_frame_header;

    fn frame(body: &[u8], more: bool) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, body.len(), more);
        out.put_slice(body);
        out.to_vec()
    }

    /// A reader over `input` delivered `chunk` bytes at a time.
    async fn read_all(input: Vec<u8>, chunk: usize, max_message: usize) -> Vec<Incoming> {
        let (mut tx, rx) = tokio::io::duplex(chunk.max(1));
        let writer = tokio::spawn(async move {
            for piece in input.chunks(chunk.max(1)) {
                tx.write_all(piece).await.unwrap();
            }
        });
        let mut reader = Reader::new(rx, max_message);
        let mut out = Vec::new();
        loop {
            match reader.next().await {
                Ok(item) => out.push(item),
                Err(ZmtpError::Closed { mid_message: false }) => break,
                Err(err) => panic!("{err}"),
            }
        }
        writer.await.unwrap();
        out
    }

    fn message(frames: &[&[u8]]) -> Incoming {
        Incoming::Message(frames.iter().map(|f| Bytes::copy_from_slice(f)).collect())
    }

    #[tokio::test]
    async fn messages_arrive_whole_however_the_bytes_are_cut() {
        let big = vec![7u8; ZERO_COPY_FROM + 3];
        let mut input = frame(b"topic", true);
        input.extend(frame(&[1u8; 300], true));
        input.extend(frame(b"", false));
        input.extend(frame(&big, false));
        for chunk in [1, 2, 7, 300, 1 << 20] {
            let got = read_all(input.clone(), chunk, 1 << 20).await;
            assert_eq!(
                got,
                [message(&[b"topic", &[1u8; 300], b""]), message(&[&big])],
                "chunk {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn oversize_and_overlong_messages_are_skipped_and_the_next_one_read() {
        let mut input = frame(&[0u8; 100], true);
        input.extend(frame(&[0u8; 100], false));
        for _ in 0..=MAX_FRAMES {
            input.extend(frame(b"f", true));
        }
        input.extend(frame(b"f", false));
        input.extend(frame(b"ok", false));
        let got = read_all(input, 5, 150).await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(&got[0], Incoming::Discarded(r) if r.contains("150-byte limit")));
        assert!(matches!(&got[1], Incoming::Discarded(r) if r.contains("frames")));
        assert_eq!(got[2], message(&[b"ok"]));
    }

    #[tokio::test]
    async fn a_huge_declared_size_is_skipped_without_allocating_it() {
        let mut input = vec![FLAG_LONG];
        input.extend(u64::MAX.to_be_bytes());
        input.extend([0u8; 10]);
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(&input).await.unwrap();
        drop(tx);
        let mut reader = Reader::new(rx, 1 << 20);
        assert!(matches!(
            reader.next().await,
            Err(ZmtpError::Closed { mid_message: true })
        ));
        assert!(reader.buf.capacity() < 1 << 20);
    }

    #[tokio::test]
    async fn reserved_flags_and_bad_commands_are_protocol_errors() {
        for input in [
            vec![0x08, 0],
            vec![FLAG_COMMAND | FLAG_MORE, 0],
            [frame(b"a", true), vec![FLAG_COMMAND, 1, 0]].concat(),
            vec![FLAG_COMMAND, 0],
            vec![FLAG_COMMAND | FLAG_LONG, 0, 0, 0, 0, 0, 1, 0, 1],
        ] {
            let (mut tx, rx) = tokio::io::duplex(64);
            tx.write_all(&input).await.unwrap();
            drop(tx);
            let mut reader = Reader::new(rx, 1 << 20);
            let result = reader.next().await;
            assert!(
                matches!(result, Err(ZmtpError::Protocol(_))),
                "{input:?}: {result:?}"
            );
        }
    }
}
