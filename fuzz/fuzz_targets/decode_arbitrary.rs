//! Arbitrary bytes from a peer: the decoder must never panic, never buffer past the
//! frame limit, and give the same answer however the bytes are split into reads.
//!
//! Input layout: the first byte picks the read size for the chunked pass, the rest is
//! the byte stream.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use planewire::codec::{Frame, FrameDecoder, HEADER_LEN, INITIAL_READ_CAPACITY, encode_frame};

/// Small, so headers announcing frames just under and over the limit are easy to reach.
const MAX_FRAME_LEN: usize = 64 * 1024;
const SHRINK_THRESHOLD: usize = 64 * 1024;

/// Where decoding a byte stream stops.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The decoder refused the stream (the error's message).
    Failed(String),
    /// Input ran out; this many bytes of an incomplete frame were left buffered.
    NeedMore(usize),
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, wire)) = data.split_first() else {
        return;
    };
    let whole = decode_in_reads(wire, wire.len().max(1));
    let chunked = decode_in_reads(wire, usize::from(first) + 1);
    assert_eq!(
        whole, chunked,
        "decoding depends on how the bytes were split into reads"
    );
});

/// Feeds `wire` to a fresh decoder `read_size` bytes at a time, as a connection would.
fn decode_in_reads(wire: &[u8], read_size: usize) -> (Vec<Frame>, Outcome) {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN, SHRINK_THRESHOLD);
    let mut buf = decoder.new_buffer();
    let mut frames = Vec::new();
    let mut fed = 0;
    for read in wire.chunks(read_size) {
        buf.extend_from_slice(read);
        fed += read.len();
        loop {
            let consumed = fed - buf.len();
            let result = decoder.decode_frame(&mut buf);
            check_capacity(&buf, read_size);
            match result {
                Ok(Some(frame)) => {
                    let frame_bytes = &wire[consumed..fed - buf.len()];
                    check_reencodes(&frame, frame_bytes);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(err) => {
                    // The connection would be closed here; nothing more is read.
                    let _ = decoder.check_eof(&buf);
                    return (frames, Outcome::Failed(err.to_string()));
                }
            }
        }
    }
    assert_eq!(
        decoder.check_eof(&buf).is_ok(),
        buf.is_empty(),
        "check_eof disagrees with the buffered byte count"
    );
    (frames, Outcome::NeedMore(buf.len()))
}

/// A header may reserve room for the rest of its frame, never more: the buffer holds at
/// most one partial frame (≤ the limit) plus one read, and growth may double that.
fn check_capacity(buf: &BytesMut, read_size: usize) {
    let bound = 2 * (MAX_FRAME_LEN + read_size) + INITIAL_READ_CAPACITY;
    assert!(
        buf.capacity() <= bound,
        "read buffer grew to {} bytes (bound {bound}) with a {MAX_FRAME_LEN}-byte frame limit",
        buf.capacity()
    );
}

/// Whatever the decoder accepts, the encoder writes back byte for byte (the `aux` word
/// excepted for kinds that do not use it: the decoder ignores it there).
fn check_reencodes(frame: &Frame, frame_bytes: &[u8]) {
    let mut out = BytesMut::new();
    encode_frame(frame, MAX_FRAME_LEN, &mut out)
        .unwrap_or_else(|err| panic!("decoded frame {frame:?} does not re-encode: {err}"));
    assert_eq!(out.len(), frame_bytes.len(), "re-encoded length differs");
    let aux = HEADER_LEN - 4..HEADER_LEN;
    let uses_aux = matches!(
        frame,
        Frame::Request(_) | Frame::Error { .. } | Frame::GoAway { .. }
    );
    for (i, (got, want)) in out.iter().zip(frame_bytes).enumerate() {
        if uses_aux || !aux.contains(&i) {
            assert_eq!(got, want, "re-encoded {frame:?} differs at byte {i}");
        }
    }
}
