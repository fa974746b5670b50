//! Valid frames, encoded and then read back in arbitrary pieces: the decoder must yield
//! exactly the frames that were sent, in order, with nothing left over, whatever the read
//! sizes; and it must give back the memory of a large frame once its buffer is empty.
//!
//! The frames are sent through `WriteQueue` (the socket path) and checked against
//! `encode_frame` (the flat path), so the two encoders are held to the same bytes.

#![no_main]

use std::io::IoSlice;
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::{Buf, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use planewire::codec::{
    CodecError, ErrorCode, Frame, FrameDecoder, HEADER_LEN, HeaderMap, INITIAL_READ_CAPACITY,
    RequestFrame, WriteQueue, encode_frame,
};

/// Above the decoder's initial capacity, so large frames make the buffer grow and shrink.
const MAX_FRAME_LEN: usize = 256 * 1024;
const SHRINK_THRESHOLD: usize = INITIAL_READ_CAPACITY;
/// Keeps one input's work small enough for many executions per second.
const MAX_WIRE_LEN: usize = 512 * 1024;
/// Largest simulated `read`; a real connection reads into spare capacity of about this.
const MAX_READ_LEN: usize = 128 * 1024;
/// After this many reads the rest arrives at once: tiny reads through a large payload
/// cost time and reach no new code.
const MAX_READS: usize = 2048;

#[derive(Arbitrary, Debug)]
struct Input {
    frames: Vec<FrameSpec>,
    /// Sizes of the successive reads the bytes arrive in, cycled; empty means one read.
    reads: Vec<u32>,
}

#[derive(Arbitrary, Debug)]
enum FrameSpec {
    Request {
        stream_id: u64,
        path: String,
        headers: Vec<(String, String)>,
        payload: PayloadSpec,
        /// Seconds and sub-second nanoseconds of the deadline.
        timeout: Option<(u64, u32)>,
    },
    Data {
        stream_id: u64,
        payload: PayloadSpec,
    },
    End {
        stream_id: u64,
        payload: PayloadSpec,
    },
    Error {
        stream_id: u64,
        code: u32,
        message: String,
    },
    Cancel {
        stream_id: u64,
    },
    GoAway {
        last_stream_id: u64,
        code: u32,
        message: String,
    },
    Ping {
        opaque: u64,
    },
    Pong {
        opaque: u64,
    },
    WindowUpdate {
        stream_id: u64,
        increment: u32,
    },
}

#[derive(Arbitrary, Debug)]
enum PayloadSpec {
    Literal(Vec<u8>),
    /// A large payload from a few input bytes, to reach the size limit and the shrink path.
    Repeated {
        len: u32,
        byte: u8,
    },
}

impl PayloadSpec {
    fn to_bytes(&self) -> Bytes {
        match self {
            Self::Literal(bytes) => Bytes::copy_from_slice(bytes),
            Self::Repeated { len, byte } => {
                Bytes::from(vec![*byte; *len as usize % (MAX_FRAME_LEN + 4096)])
            }
        }
    }
}

impl FrameSpec {
    /// The frame to send and the frame the receiver must see. They differ only in the
    /// deadline, which travels in whole milliseconds (at least 1, at most `u32::MAX`).
    fn to_frames(&self) -> (Frame, Frame) {
        let frame = match self {
            Self::Request {
                stream_id,
                path,
                headers,
                payload,
                timeout,
            } => {
                let request = RequestFrame {
                    stream_id: *stream_id,
                    path: path.clone().into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<HeaderMap>(),
                    payload: payload.to_bytes(),
                    timeout: timeout
                        .map(|(secs, nanos)| Duration::new(secs, nanos % 1_000_000_000)),
                };
                let expected = RequestFrame {
                    timeout: request.timeout.map(|t| {
                        let ms = u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1);
                        Duration::from_millis(u64::from(ms))
                    }),
                    ..request.clone()
                };
                return (Frame::Request(request), Frame::Request(expected));
            }
            Self::Data { stream_id, payload } => Frame::Data {
                stream_id: *stream_id,
                payload: payload.to_bytes(),
            },
            Self::End { stream_id, payload } => Frame::End {
                stream_id: *stream_id,
                payload: payload.to_bytes(),
            },
            Self::Error {
                stream_id,
                code,
                message,
            } => Frame::Error {
                stream_id: *stream_id,
                code: ErrorCode::from_u32(*code),
                message: message.clone().into(),
            },
            Self::Cancel { stream_id } => Frame::Cancel {
                stream_id: *stream_id,
            },
            Self::GoAway {
                last_stream_id,
                code,
                message,
            } => Frame::GoAway {
                last_stream_id: *last_stream_id,
                code: ErrorCode::from_u32(*code),
                message: message.clone().into(),
            },
            Self::Ping { opaque } => Frame::Ping { opaque: *opaque },
            Self::Pong { opaque } => Frame::Pong { opaque: *opaque },
            Self::WindowUpdate {
                stream_id,
                increment,
            } => Frame::WindowUpdate {
                stream_id: *stream_id,
                increment: *increment,
            },
        };
        (frame.clone(), frame)
    }
}

fuzz_target!(|input: Input| {
    let (sent, mut queue, wire) = encode_all(&input.frames);
    check_vectored(&queue, &wire);
    let reads: Vec<usize> = input
        .reads
        .iter()
        .map(|&r| r as usize % MAX_READ_LEN + 1)
        .collect();
    let received = receive(&mut queue, &reads);
    assert_eq!(received.len(), sent.len(), "frame count differs");
    for (i, (got, want)) in received.iter().zip(&sent).enumerate() {
        assert_eq!(got, want, "frame {i} differs");
    }
});

/// Encodes every spec both ways; returns the frames the receiver must see, the write
/// queue, and the flat encoding the queue must match.
fn encode_all(specs: &[FrameSpec]) -> (Vec<Frame>, WriteQueue, BytesMut) {
    let mut expected = Vec::new();
    let mut queue = WriteQueue::new();
    let mut wire = BytesMut::new();
    for spec in specs {
        let (frame, receiver_sees) = spec.to_frames();
        let len = wire_len(&frame);
        if wire.len() + len > MAX_WIRE_LEN {
            break;
        }
        let before = (wire.len(), queue.remaining());
        let flat = encode_frame(&frame, MAX_FRAME_LEN, &mut wire);
        let queued = queue.push(&frame, MAX_FRAME_LEN);
        match (flat, queued) {
            (Ok(()), Ok(())) => {
                assert_eq!(
                    wire.len() - before.0,
                    len,
                    "encode_frame wrote a wrong length"
                );
                assert_eq!(
                    queue.remaining() - before.1,
                    len,
                    "WriteQueue queued a wrong length"
                );
                expected.push(receiver_sees);
            }
            (Err(flat), Err(_)) => {
                check_rejection(&frame, len, &flat);
                assert_eq!(
                    (wire.len(), queue.remaining()),
                    before,
                    "a refused frame left bytes"
                );
            }
            (flat, queued) => panic!("encoders disagree on {frame:?}: {flat:?} vs {queued:?}"),
        }
    }
    assert_eq!(
        queue.remaining(),
        wire.len(),
        "WriteQueue and encode_frame differ in length"
    );
    (expected, queue, wire)
}

/// Length on the wire, computed from the protocol's layout rather than the encoder.
fn wire_len(frame: &Frame) -> usize {
    let parts = match frame {
        Frame::Request(r) => {
            let headers: usize = r.headers.iter().map(|(k, v)| 4 + k.len() + v.len()).sum();
            r.path.len() + headers + r.payload.len()
        }
        Frame::Data { payload, .. } | Frame::End { payload, .. } => payload.len(),
        Frame::Error { message, .. } | Frame::GoAway { message, .. } => message.len(),
        Frame::Cancel { .. }
        | Frame::Ping { .. }
        | Frame::Pong { .. }
        | Frame::WindowUpdate { .. } => 0,
    };
    HEADER_LEN + parts
}

/// An encoder may refuse a frame only for a reason the protocol gives.
fn check_rejection(frame: &Frame, len: usize, err: &CodecError) {
    let reason_holds = match err {
        CodecError::FrameTooLarge { .. } => len > MAX_FRAME_LEN,
        CodecError::LengthMismatch { .. } => {
            matches!(frame, Frame::Request(r) if r.path.is_empty())
        }
        CodecError::BadHeaderMap(_) => {
            matches!(frame, Frame::Request(r) if r.headers.iter().any(|(k, _)| k.is_empty()))
        }
        CodecError::PartTooLong { len, max, .. } => len > max,
        _ => false,
    };
    assert!(reason_holds, "encoder refused {frame:?} with {err:?}");
}

/// The vectored view of the whole queue is the flat encoding, piece for piece.
fn check_vectored(queue: &WriteQueue, wire: &[u8]) {
    let mut slices = [IoSlice::new(&[]); 64];
    let n = queue.chunks_vectored(&mut slices);
    let mut joined = Vec::with_capacity(queue.remaining());
    for slice in &slices[..n] {
        joined.extend_from_slice(slice);
    }
    if joined.len() == queue.remaining() {
        assert!(
            joined == wire,
            "vectored chunks differ from encode_frame's bytes"
        );
    } else {
        assert!(
            n == slices.len(),
            "vectored chunks stop short with free slots"
        );
        assert!(
            wire.starts_with(&joined),
            "vectored chunks are not a prefix of the bytes"
        );
    }
}

/// Moves the queue's bytes into a fresh decoder in reads of the given sizes (cycled, up to
/// [`MAX_READS`]) and decodes after each read, as a connection's read loop does.
fn receive(queue: &mut WriteQueue, reads: &[usize]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN, SHRINK_THRESHOLD);
    let mut buf = decoder.new_buffer();
    let mut frames = Vec::new();
    let mut sizes = reads.iter().copied().cycle().take(MAX_READS);
    while queue.has_remaining() {
        let read_len = sizes.next().unwrap_or(usize::MAX).min(queue.remaining());
        let mut left = read_len;
        while left > 0 {
            let chunk = queue.chunk();
            let n = chunk.len().min(left);
            buf.extend_from_slice(&chunk[..n]);
            queue.advance(n);
            left -= n;
        }
        loop {
            let result = decoder.decode_frame(&mut buf);
            check_capacity(&buf, read_len);
            match result {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => panic!("valid bytes refused after {} frames: {err}", frames.len()),
            }
        }
        check_shrunk(&buf);
    }
    assert!(
        buf.is_empty(),
        "{} bytes left after the last frame",
        buf.len()
    );
    decoder
        .check_eof(&buf)
        .expect("check_eof on an empty buffer");
    frames
}

fn check_capacity(buf: &BytesMut, read_len: usize) {
    let bound = 2 * (MAX_FRAME_LEN + read_len) + INITIAL_READ_CAPACITY;
    assert!(
        buf.capacity() <= bound,
        "read buffer grew to {} bytes (bound {bound})",
        buf.capacity()
    );
}

/// Once emptied, a buffer that grew past the threshold has been replaced by a small one.
fn check_shrunk(buf: &BytesMut) {
    if buf.is_empty() {
        assert!(
            buf.capacity() <= SHRINK_THRESHOLD,
            "empty read buffer still holds {} bytes (shrink threshold {SHRINK_THRESHOLD})",
            buf.capacity()
        );
    }
}
