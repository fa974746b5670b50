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

use bytes::{BufMut, Bytes, BytesMut};

pub(super) const GREETING_LEN: usize = 64;
pub(super) const FLAG_MORE: u8 = 0x01;
pub(super) const FLAG_LONG: u8 = 0x02;
pub(super) const FLAG_COMMAND: u8 = 0x04;
/// Largest command body accepted; commands carry names and short properties.
pub(super) const MAX_COMMAND: usize = 64 * 1024;
/// Frames at least this large are read into a buffer of their own and handed on
/// without a copy; smaller ones are copied out of the read buffer, so a small event
/// never pins a whole read chunk.
pub(super) const ZERO_COPY_FROM: usize = 64 * 1024;
/// How much the read buffer grows by when it is full.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Frames kept per message; a longer message is discarded whole (an event has 3).
pub(super) const MAX_FRAMES: usize = 16;

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

pub(super) fn protocol(reason: impl Into<String>) -> ZmtpError {
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

pub(super) fn greeting() -> [u8; GREETING_LEN] {
    let mut greeting = [0u8; GREETING_LEN];
    greeting[0] = 0xFF;
    greeting[9] = 0x7F;
    greeting[10] = 3;
    greeting[12..16].copy_from_slice(b"NULL");
    // as-server (byte 32) and the filler stay 0: NULL has no client and server roles.
    greeting
}

pub(super) fn check_greeting(greeting: &[u8; GREETING_LEN]) -> Result<(), ZmtpError> {
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

pub(super) fn ready(ours: SocketType) -> BytesMut {
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
pub(super) fn check_ready(body: &[u8], ours: SocketType) -> Result<(), ZmtpError> {
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

pub(super) fn parse_command(body: Bytes) -> Result<Command, ZmtpError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
