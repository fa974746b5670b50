//! ZMTP 3.0 with the NULL mechanism (rfc.zeromq.org/spec/23), as much of it as PUB/SUB
//! over TCP needs: the greeting, the READY handshake, and frames. No I/O policy lives
//! here: the publisher and subscriber decide what to queue, drop and retry.
//!
//! ```text
//! greeting (64 bytes)  FF 00×8 7F | 03 00 | "NULL" 00×16 | as-server 00 | 00×31
//! frame                flags (MORE 1, LONG 2, COMMAND 4) | size: 1 byte, or 8 if LONG | body
//! READY command        05 "READY" | 0B "Socket-Type" | u32 BE length | "PUB" or "SUB"
//! subscription (SUB)   one frame: 01 prefix (subscribe) or 00 prefix (cancel)
//! ```
//!
//! This side announces 3.0, so a ZMTP 3.1 peer (libzmq 4.3) sends subscriptions as
//! messages as well; 3.1's SUBSCRIBE and CANCEL commands are understood anyway.

use std::fmt;
use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const GREETING_LEN: usize = 64;
const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;
/// Largest command body accepted; commands carry names and short properties.
const MAX_COMMAND: usize = 64 * 1024;
/// Frames at least this large are read into a buffer of their own and handed on
/// without a copy; smaller ones are copied out of the read buffer, so a small event
/// never pins a whole read chunk.
const ZERO_COPY_FROM: usize = 64 * 1024;
/// How much the read buffer grows by when it is full.
const READ_CHUNK: usize = 16 * 1024;
/// Frames kept per message; a longer message is discarded whole (an event has 3).
const MAX_FRAMES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SocketType {
    Pub,
    Sub,
}

impl SocketType {
    fn name(self) -> &'static str {
        match self {
            Self::Pub => "PUB",
            Self::Sub => "SUB",
        }
    }

    /// Whether a peer announcing `peer` may talk to this socket (RFC 23, socket types).
    fn accepts(self, peer: &[u8]) -> bool {
        let compatible: [&[u8]; 2] = match self {
            Self::Pub => [b"SUB", b"XSUB"],
            Self::Sub => [b"PUB", b"XPUB"],
        };
        compatible.iter().any(|t| peer.eq_ignore_ascii_case(t))
    }
}

/// Why a connection cannot go on.
#[derive(Debug)]
pub(super) enum ZmtpError {
    Io(io::Error),
    /// The peer closed the connection (with `mid_message` if it stopped inside one).
    Closed {
        mid_message: bool,
    },
    /// The peer broke the protocol; the connection is dropped.
    Protocol(String),
}

impl fmt::Display for ZmtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(err) => write!(f, "{err}"),
            Self::Closed { mid_message: false } => f.write_str("the peer closed the connection"),
            Self::Closed { mid_message: true } => {
                f.write_str("the peer closed the connection inside a message")
            }
            Self::Protocol(reason) => write!(f, "ZMTP protocol error: {reason}"),
        }
    }
}

impl From<io::Error> for ZmtpError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

fn protocol(reason: impl Into<String>) -> ZmtpError {
    ZmtpError::Protocol(reason.into())
}

/// What the peer sent: a whole message, a message that was discarded (and why), or a
/// command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Incoming {
    Message(Vec<Bytes>),
    Discarded(String),
    Command(Command),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Command {
    /// ZMTP 3.1's form of a subscription (or, with `false`, its cancellation).
    Subscribe { prefix: Bytes, subscribe: bool },
    /// The handshake's READY, with its body (name and properties).
    Ready(Bytes),
    /// The peer's ERROR command: it is about to close, saying why.
    Error(String),
    /// Anything else (PING, for one), ignored.
    Other,
}

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

fn greeting() -> [u8; GREETING_LEN] {
    let mut greeting = [0u8; GREETING_LEN];
    greeting[0] = 0xFF;
    greeting[9] = 0x7F;
    greeting[10] = 3;
    greeting[12..16].copy_from_slice(b"NULL");
    // as-server (byte 32) and the filler stay 0: NULL has no client and server roles.
    greeting
}

fn check_greeting(greeting: &[u8; GREETING_LEN]) -> Result<(), ZmtpError> {
    if greeting[0] != 0xFF || greeting[9] & 1 != 1 {
        return Err(protocol("the peer's greeting has no ZMTP signature"));
    }
    if greeting[10] < 3 {
        return Err(protocol(format!(
            "the peer speaks ZMTP {}.{}; this side needs 3.0 or later",
            greeting[10], greeting[11]
        )));
    }
    let mechanism = &greeting[12..32];
    let name_len = mechanism.iter().position(|b| *b == 0).unwrap_or(20);
    if &mechanism[..name_len] != b"NULL" {
        return Err(protocol(format!(
            "the peer wants the {:?} security mechanism; only NULL is supported",
            String::from_utf8_lossy(&mechanism[..name_len])
        )));
    }
    Ok(())
}

fn ready(ours: SocketType) -> BytesMut {
    let name = ours.name().as_bytes();
    let mut body = BytesMut::new();
    body.put_u8(5);
    body.put_slice(b"READY");
    body.put_u8(11);
    body.put_slice(b"Socket-Type");
    body.put_u32(name.len() as u32);
    body.put_slice(name);
    let mut frame = BytesMut::new();
    put_header(&mut frame, FLAG_COMMAND, body.len());
    frame.put_slice(&body);
    frame
}

/// Checks a READY command's body: its properties must parse and name a socket type
/// `ours` can talk to.
fn check_ready(body: &[u8], ours: SocketType) -> Result<(), ZmtpError> {
    let (name, mut properties) = command_name(body)?;
    if name != b"READY" {
        return Err(protocol(format!(
            "expected READY, got the {:?} command",
            String::from_utf8_lossy(name)
        )));
    }
    let mut socket_type = None;
    while !properties.is_empty() {
        let truncated = || protocol("a READY property is truncated");
        let (&name_len, rest) = properties.split_first().ok_or_else(truncated)?;
        let name_len = usize::from(name_len);
        let (name, rest) = rest.split_at_checked(name_len).ok_or_else(truncated)?;
        let (len, rest) = rest.split_at_checked(4).ok_or_else(truncated)?;
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let (value, rest) = rest.split_at_checked(len).ok_or_else(truncated)?;
        if name.eq_ignore_ascii_case(b"Socket-Type") {
            socket_type = Some(value);
        }
        properties = rest;
    }
    match socket_type {
        Some(peer) if ours.accepts(peer) => Ok(()),
        Some(peer) => Err(protocol(format!(
            "a {} socket cannot talk to a {} socket",
            ours.name(),
            String::from_utf8_lossy(peer)
        ))),
        None => Err(protocol("the peer's READY has no Socket-Type")),
    }
}

/// A command body's name and the bytes after it.
fn command_name(body: &[u8]) -> Result<(&[u8], &[u8]), ZmtpError> {
    let (&len, rest) = body
        .split_first()
        .ok_or_else(|| protocol("an empty command"))?;
    rest.split_at_checked(usize::from(len))
        .ok_or_else(|| protocol("a command name is truncated"))
}

fn parse_command(body: Bytes) -> Result<Command, ZmtpError> {
    let (name, rest) = command_name(&body)?;
    Ok(match name {
        b"READY" => Command::Ready(body.clone()),
        b"SUBSCRIBE" | b"CANCEL" => Command::Subscribe {
            prefix: Bytes::copy_from_slice(rest),
            subscribe: name == b"SUBSCRIBE",
        },
        b"ERROR" => {
            let reason = rest.get(1..).unwrap_or_default();
            Command::Error(String::from_utf8_lossy(reason).into_owned())
        }
        _ => Command::Other,
    })
}

fn put_header(dst: &mut BytesMut, flags: u8, len: usize) {
    match u8::try_from(len) {
        Ok(short) => {
            dst.put_u8(flags);
            dst.put_u8(short);
        }
        Err(_) => {
            dst.put_u8(flags | FLAG_LONG);
            dst.put_u64(len as u64);
        }
    }
}

/// Appends a message frame's header for a body of `len` bytes; the body follows.
pub(super) fn put_frame_header(dst: &mut BytesMut, len: usize, more: bool) {
    put_header(dst, if more { FLAG_MORE } else { 0 }, len);
}

/// A SUB socket's subscription to `prefix`, as one message.
pub(super) fn subscription(prefix: &[u8]) -> BytesMut {
    let mut message = BytesMut::new();
    put_frame_header(&mut message, 1 + prefix.len(), false);
    message.put_u8(1);
    message.put_slice(prefix);
    message
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
    use tokio::io::AsyncWriteExt;

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

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse_command(Bytes::from_static(b"\x09SUBSCRIBEpw.ev")).unwrap(),
            Command::Subscribe {
                prefix: Bytes::from_static(b"pw.ev"),
                subscribe: true
            }
        );
        assert_eq!(
            parse_command(Bytes::from_static(b"\x06CANCEL")).unwrap(),
            Command::Subscribe {
                prefix: Bytes::new(),
                subscribe: false
            }
        );
        assert_eq!(
            parse_command(Bytes::from_static(b"\x05ERROR\x03bad")).unwrap(),
            Command::Error("bad".into())
        );
        let ping = Bytes::from_static(b"\x04PING\x00\x01");
        assert_eq!(parse_command(ping).unwrap(), Command::Other);
        assert!(parse_command(Bytes::from_static(b"\x09SUB")).is_err());
    }

    #[test]
    fn ready_is_checked() {
        let ours = ready(SocketType::Pub);
        // Header (flags, size) then the body.
        assert_eq!(
            ours[..2],
            [FLAG_COMMAND, 0x19],
            "as PROTOCOL.md §10.3 shows"
        );
        assert_eq!(&ours[2..], b"\x05READY\x0bSocket-Type\x00\x00\x00\x03PUB");
        check_ready(&ours[2..], SocketType::Sub).unwrap();
        let err = check_ready(&ours[2..], SocketType::Pub).unwrap_err();
        assert!(
            err.to_string().contains("PUB socket cannot talk to a PUB"),
            "{err}"
        );
        let identity = b"\x05READY\x08Identity\x00\x00\x00\x00\x0bSocket-Type\x00\x00\x00\x04XSUB";
        check_ready(identity, SocketType::Pub).unwrap();
        for bad in [
            &b"\x05READY"[..],
            b"\x05READY\x0bSocket-Type\x00\x00\x00\x09SUB",
            b"\x05HELLO",
            b"\x05REA",
        ] {
            assert!(check_ready(bad, SocketType::Pub).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn greetings_are_checked() {
        let ours = greeting();
        check_greeting(&ours).unwrap();
        let mut old = ours;
        old[10] = 2;
        assert!(
            check_greeting(&old)
                .unwrap_err()
                .to_string()
                .contains("2.0")
        );
        let mut curve = ours;
        curve[12..17].copy_from_slice(b"CURVE");
        assert!(
            check_greeting(&curve)
                .unwrap_err()
                .to_string()
                .contains("CURVE")
        );
        let mut http = ours;
        http[..4].copy_from_slice(b"GET ");
        assert!(check_greeting(&http).is_err());
    }
}
