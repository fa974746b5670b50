use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use zerocopy::IntoBytes;

use super::*;

const MAX: usize = 32 * 1024 * 1024;
const SHRINK: usize = 8 * 1024 * 1024;

fn decoder() -> FrameDecoder {
    FrameDecoder::new(MAX, SHRINK)
}

fn encode(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    encode_frame(frame, MAX, &mut buf).unwrap();
    buf
}

fn decode_all(dec: &mut FrameDecoder, buf: &mut BytesMut) -> Result<Vec<Frame>, CodecError> {
    let mut out = Vec::new();
    while let Some(frame) = dec.decode_frame(buf)? {
        out.push(frame);
    }
    Ok(out)
}

fn request(stream_id: u64, payload: &'static [u8]) -> Frame {
    Frame::Request(RequestFrame {
        stream_id,
        path: "ns/comp/generate/7".into(),
        headers: [("traceparent", "00-abc-def-01"), ("x-request-id", "r-1")]
            .into_iter()
            .collect(),
        payload: Bytes::from_static(payload),
        timeout: Some(Duration::from_millis(1500)),
    })
}

fn every_kind() -> Vec<Frame> {
    vec![
        request(1, b"hello"),
        Frame::Request(RequestFrame {
            stream_id: 2,
            path: "a".into(),
            headers: HeaderMap::new(),
            payload: Bytes::new(),
            timeout: None,
        }),
        Frame::Data {
            stream_id: 1,
            payload: Bytes::from_static(b"chunk"),
        },
        Frame::End {
            stream_id: 1,
            payload: Bytes::new(),
        },
        Frame::End {
            stream_id: 3,
            payload: Bytes::from_static(b"last"),
        },
        Frame::Error {
            stream_id: 4,
            code: ErrorCode::UnknownEndpoint,
            message: "no handler for ns/x/y".into(),
        },
        Frame::Error {
            stream_id: 5,
            code: ErrorCode::Other(4242),
            message: "future".into(),
        },
        Frame::Cancel { stream_id: 1 },
        Frame::GoAway {
            last_stream_id: 9,
            code: ErrorCode::NoError,
            message: "draining".into(),
        },
        Frame::Ping {
            opaque: 0xdead_beef,
        },
        Frame::Pong { opaque: u64::MAX },
        Frame::WindowUpdate {
            stream_id: 6,
            increment: 1 << 20,
        },
    ]
}

fn header_bytes(kind: u8, path: u16, meta: u16, payload: u32) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_slice(FrameHeader::new(FrameKind::Data, 1, path, meta, payload, 0).as_bytes());
    buf[2] = kind;
    buf
}

#[test]
fn every_kind_round_trips() {
    for frame in every_kind() {
        let mut buf = encode(&frame);
        assert_eq!(buf.len(), frame.checked_len(MAX).unwrap());
        let decoded = decoder().decode_frame(&mut buf).unwrap();
        assert_eq!(decoded.as_ref(), Some(&frame));
        assert!(buf.is_empty());
    }
}

#[test]
fn every_error_code_round_trips() {
    for n in 0..=11 {
        assert_eq!(ErrorCode::from_u32(n).to_u32(), n);
    }
}

#[test]
fn header_is_24_bytes_little_endian() {
    let buf = encode(&Frame::Data {
        stream_id: 0x0102,
        payload: Bytes::from_static(b"xyz"),
    });
    assert_eq!(
        &buf[..HEADER_LEN],
        &[
            0xB7, 2, 2, 0, 0, 0, 0, 0, 0x02, 0x01, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0
        ]
    );
}

#[test]
fn byte_at_a_time_and_every_split_match_one_piece() {
    let frames = every_kind();
    let mut whole = BytesMut::new();
    for f in &frames {
        whole.extend_from_slice(&encode(f));
    }
    let mut dec = decoder();
    let mut buf = BytesMut::new();
    let mut trickled = Vec::new();
    for byte in whole.iter() {
        buf.put_u8(*byte);
        trickled.extend(decode_all(&mut dec, &mut buf).unwrap());
    }
    assert_eq!(trickled, frames);

    for split in 0..=whole.len() {
        let mut dec = decoder();
        let mut buf = BytesMut::from(&whole[..split]);
        let mut out = decode_all(&mut dec, &mut buf).unwrap();
        buf.extend_from_slice(&whole[split..]);
        out.extend(decode_all(&mut dec, &mut buf).unwrap());
        assert_eq!(out, frames, "split at {split}");
    }
}

#[test]
fn decoded_parts_point_into_the_read_buffer() {
    let mut buf = encode(&request(1, &[7u8; 4096]));
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(Frame::Request(req)) = decoder().decode_frame(&mut buf).unwrap() else {
        panic!("expected a request");
    };
    for ptr in [req.payload.as_ptr(), req.path.as_bytes().as_ptr()] {
        assert!(
            range.contains(&(ptr as usize)),
            "part was copied out of the read buffer"
        );
    }
    let value = req.headers.get("x-request-id").unwrap();
    assert!(range.contains(&(value.as_ptr() as usize)));
}

#[test]
fn oversize_frame_is_refused_from_its_header_alone() {
    let mut dec = FrameDecoder::new(1024 * 1024, 1024 * 1024);
    let mut buf = header_bytes(FrameKind::Data as u8, 0, 0, 64 * 1024 * 1024);
    let cap_before = buf.capacity();
    let err = dec.decode_frame(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { size, max: 1048576 } if size == 64 * 1024 * 1024 + 24),
        "{err}"
    );
    assert!(err.to_string().contains("DYN_TCP_MAX_MESSAGE_SIZE"));
    assert_eq!(
        buf.capacity(),
        cap_before,
        "memory was reserved for a refused frame"
    );
}

#[test]
fn frame_exactly_at_the_limit_is_accepted() {
    let max = 1000;
    let frame = Frame::Data {
        stream_id: 1,
        payload: Bytes::from(vec![1u8; max - HEADER_LEN]),
    };
    let mut buf = BytesMut::new();
    encode_frame(&frame, max, &mut buf).unwrap();
    assert_eq!(
        FrameDecoder::new(max, max).decode_frame(&mut buf).unwrap(),
        Some(frame)
    );
    let over = Frame::Data {
        stream_id: 1,
        payload: Bytes::from(vec![1u8; max - HEADER_LEN + 1]),
    };
    assert!(matches!(
        encode_frame(&over, max, &mut BytesMut::new()),
        Err(CodecError::FrameTooLarge {
            size: 1001,
            max: 1000
        })
    ));
}

#[test]
fn partial_frame_reserves_only_after_the_size_check() {
    let frame = Frame::Data {
        stream_id: 1,
        payload: Bytes::from(vec![0u8; 200_000]),
    };
    let whole = encode(&frame);
    let mut dec = decoder();
    let mut buf = BytesMut::from(&whole[..HEADER_LEN]);
    assert_eq!(dec.decode_frame(&mut buf).unwrap(), None);
    assert!(
        buf.capacity() >= whole.len(),
        "room for the body is reserved once"
    );
}

#[test]
fn buffer_shrinks_after_a_32_mib_message() {
    let payload = Bytes::from(vec![0xabu8; MAX - HEADER_LEN]);
    let whole = encode(&Frame::Data {
        stream_id: 1,
        payload,
    });
    let mut dec = decoder();
    let mut buf = dec.new_buffer();
    let small = buf.capacity();
    for chunk in whole.chunks(1 << 20) {
        buf.extend_from_slice(chunk);
        if let Some(frame) = dec.decode_frame(&mut buf).unwrap() {
            assert_eq!(frame.payload().len(), MAX - HEADER_LEN);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(buf.capacity(), small);
    assert_eq!(small, INITIAL_READ_CAPACITY);
}

/// Feeds `whole` to the decoder a MiB at a time and returns the one frame it makes.
fn decode_in_chunks(dec: &mut FrameDecoder, buf: &mut BytesMut, whole: &[u8]) -> Frame {
    let mut frames = Vec::new();
    for chunk in whole.chunks(1 << 20) {
        buf.extend_from_slice(chunk);
        frames.extend(dec.decode_frame(buf).unwrap());
    }
    assert_eq!(frames.len(), 1);
    frames.pop().unwrap()
}

fn large_data(fill: u8) -> BytesMut {
    encode(&Frame::Data {
        stream_id: 1,
        payload: Bytes::from(vec![fill; MAX - HEADER_LEN]),
    })
}

#[test]
fn a_spare_is_reused_once_the_frame_split_off_it_is_dropped() {
    let mut dec = decoder().with_spare();
    let mut buf = dec.new_buffer();
    let first = decode_in_chunks(&mut dec, &mut buf, &large_data(0xab));
    let first_at = first.payload().as_ptr();
    assert_eq!(
        buf.capacity(),
        INITIAL_READ_CAPACITY,
        "the read buffer shrank"
    );
    assert!(dec.spare().is_some());
    assert!(dec.spare_capacity() >= MAX);
    drop(first);

    let second = decode_in_chunks(&mut dec, &mut buf, &large_data(0xcd));
    assert_eq!(second.payload().as_ptr(), first_at, "landed in the spare");
    assert!(second.payload().iter().all(|&b| b == 0xcd));
}

#[test]
fn a_spare_shared_with_a_live_frame_is_left_alone() {
    let mut dec = decoder().with_spare();
    let mut buf = dec.new_buffer();
    let first = decode_in_chunks(&mut dec, &mut buf, &large_data(0xab));
    let kept = dec.spare();
    let second = decode_in_chunks(&mut dec, &mut buf, &large_data(0xcd));
    assert_ne!(second.payload().as_ptr(), first.payload().as_ptr());
    assert!(
        first.payload().iter().all(|&b| b == 0xab),
        "the live frame is intact"
    );
    assert!(second.payload().iter().all(|&b| b == 0xcd));
    assert_ne!(
        dec.spare(),
        kept,
        "the second frame's buffer is the spare now"
    );

    dec.release_spare();
    assert_eq!(dec.spare(), None);
    assert_eq!(dec.spare_capacity(), 0);
}

#[test]
fn a_plain_decoder_keeps_no_spare() {
    let mut dec = decoder();
    let mut buf = dec.new_buffer();
    decode_in_chunks(&mut dec, &mut buf, &large_data(0xab));
    assert_eq!(dec.spare(), None);
    assert_eq!(dec.spare_capacity(), 0);
}

#[test]
fn small_frames_do_not_trigger_reallocation() {
    let mut dec = decoder();
    let mut buf = dec.new_buffer();
    let ptr = buf.as_ptr();
    buf.extend_from_slice(&encode(&request(1, b"x")));
    assert!(dec.decode_frame(&mut buf).unwrap().is_some());
    buf.extend_from_slice(&encode(&request(2, b"y")));
    assert!(dec.decode_frame(&mut buf).unwrap().is_some());
    assert!(buf.as_ptr() > ptr, "the same allocation keeps being used");
}

#[test]
fn truncated_input_is_reported_at_eof() {
    let whole = encode(&request(1, b"hello"));
    let mut dec = decoder();
    let mut buf = BytesMut::from(&whole[..whole.len() - 1]);
    assert_eq!(dec.decode_frame(&mut buf).unwrap(), None);
    let err = dec.check_eof(&buf).unwrap_err();
    assert!(matches!(err, CodecError::Truncated { buffered } if buffered == whole.len() - 1));
    assert!(dec.check_eof(&BytesMut::new()).is_ok());
}

fn decode_err(mut buf: BytesMut) -> CodecError {
    decoder()
        .decode_frame(&mut buf)
        .expect_err("malformed input must be refused")
}

#[test]
fn malformed_headers_name_the_problem() {
    let mut bad_magic = header_bytes(2, 0, 0, 0);
    bad_magic[0] = b'G';
    assert!(matches!(decode_err(bad_magic), CodecError::BadMagic(b'G')));

    let mut bad_version = header_bytes(2, 0, 0, 0);
    bad_version[1] = 9;
    let err = decode_err(bad_version);
    assert!(matches!(err, CodecError::UnsupportedVersion(9)));
    assert!(err.to_string().contains("version 9"));

    assert!(matches!(
        decode_err(header_bytes(0, 0, 0, 0)),
        CodecError::UnknownKind(0)
    ));
    assert!(matches!(
        decode_err(header_bytes(200, 0, 0, 0)),
        CodecError::UnknownKind(200)
    ));

    let mut flags = header_bytes(2, 0, 0, 0);
    flags[3] = 0x80;
    assert!(matches!(decode_err(flags), CodecError::UnknownFlags(0x80)));
}

#[test]
fn disagreeing_lengths_are_refused() {
    let cases = [
        (FrameKind::Data, 3, 0, 0),
        (FrameKind::End, 0, 4, 0),
        (FrameKind::Cancel, 0, 0, 5),
        (FrameKind::Ping, 0, 0, 8),
        (FrameKind::WindowUpdate, 0, 0, 4),
        (FrameKind::Request, 0, 0, 1),
    ];
    for (kind, path, meta, payload) in cases {
        let err = decode_err(header_bytes(kind as u8, path, meta, payload));
        assert!(
            matches!(err, CodecError::LengthMismatch { kind: k, .. } if k == kind),
            "{err}"
        );
    }
}

fn raw_request(path: &[u8], meta: &[u8]) -> BytesMut {
    let mut buf = header_bytes(
        FrameKind::Request as u8,
        path.len() as u16,
        meta.len() as u16,
        0,
    );
    buf.put_slice(path);
    buf.put_slice(meta);
    buf
}

#[test]
fn invalid_utf8_is_refused() {
    let err = decode_err(raw_request(b"ns/\xff/x", b""));
    assert!(
        matches!(
            err,
            CodecError::InvalidUtf8 {
                field: "endpoint path"
            }
        ),
        "{err}"
    );
    let err = decode_err(raw_request(b"a", b"\x01\x00k\x01\x00\xc3"));
    assert!(
        matches!(
            err,
            CodecError::InvalidUtf8 {
                field: "header value"
            }
        ),
        "{err}"
    );

    let mut bad_message = header_bytes(FrameKind::Error as u8, 0, 0, 2);
    bad_message.put_slice(b"\xc3\x28");
    assert!(matches!(
        decode_err(bad_message),
        CodecError::InvalidUtf8 {
            field: "error message"
        }
    ));
}

#[test]
fn unparseable_header_maps_are_refused() {
    for meta in [
        &b"\x05"[..],                // length prefix cut short
        &b"\x09\x00abc"[..],         // name runs past the section
        &b"\x01\x00k"[..],           // value length missing
        &b"\x01\x00k\x05\x00ab"[..], // value runs past the section
        &b"\x00\x00\x01\x00v"[..],   // empty name
    ] {
        let err = decode_err(raw_request(b"a", meta));
        assert!(
            matches!(err, CodecError::BadHeaderMap(_)),
            "{meta:?}: {err}"
        );
    }
}

#[test]
fn encoder_refuses_what_the_wire_cannot_carry_without_writing() {
    let mut q = WriteQueue::new();
    let long_path = Frame::Request(RequestFrame {
        stream_id: 1,
        path: "p".repeat(70_000).into(),
        headers: HeaderMap::new(),
        payload: Bytes::new(),
        timeout: None,
    });
    assert!(matches!(
        q.push(&long_path, MAX),
        Err(CodecError::PartTooLong {
            field: "endpoint path",
            ..
        })
    ));
    let mut empty_name = HeaderMap::new();
    empty_name.insert("", "v");
    let bad = Frame::Request(RequestFrame {
        stream_id: 1,
        path: "a".into(),
        headers: empty_name,
        payload: Bytes::new(),
        timeout: None,
    });
    assert!(matches!(
        q.push(&bad, MAX),
        Err(CodecError::BadHeaderMap(_))
    ));
    let big = Frame::Data {
        stream_id: 1,
        payload: Bytes::from(vec![0; 2048]),
    };
    assert!(matches!(
        q.push(&big, 1024),
        Err(CodecError::FrameTooLarge { .. })
    ));
    assert!(q.is_empty());
    assert_eq!(q.remaining(), 0);
}

#[test]
fn timeouts_survive_the_wire_at_millisecond_resolution() {
    let with = |timeout| {
        Frame::Request(RequestFrame {
            stream_id: 1,
            path: "a".into(),
            headers: HeaderMap::new(),
            payload: Bytes::new(),
            timeout,
        })
    };
    let decoded = |timeout| match decoder().decode_frame(&mut encode(&with(timeout))).unwrap() {
        Some(Frame::Request(r)) => r.timeout,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        decoded(Some(Duration::from_micros(10))),
        Some(Duration::from_millis(1))
    );
    assert_eq!(
        decoded(Some(Duration::from_secs(10))),
        Some(Duration::from_secs(10))
    );
    assert_eq!(decoded(None), None);
}

#[test]
fn write_queue_keeps_large_payloads_uncopied_and_in_order() {
    let big = Bytes::from(vec![9u8; FLATTEN_BELOW * 2]);
    let frames = vec![
        request(1, b"small"),
        Frame::Data {
            stream_id: 1,
            payload: big.clone(),
        },
        Frame::End {
            stream_id: 1,
            payload: Bytes::from_static(b"tail"),
        },
    ];
    let mut q = WriteQueue::new();
    for f in &frames {
        q.push(f, MAX).unwrap();
    }
    let mut slices = [std::io::IoSlice::new(&[]); 64];
    let n = q.chunks_vectored(&mut slices);
    assert_eq!(n, 3, "prefix, big payload, flattened tail");
    assert_eq!(
        slices[1].as_ptr(),
        big.as_ptr(),
        "large payload went out without a copy"
    );

    let mut wire = BytesMut::new();
    while q.has_remaining() {
        // Advance in odd steps to cross chunk boundaries mid-chunk.
        let step = q.chunk().len().min(1000);
        wire.extend_from_slice(&q.chunk()[..step]);
        q.advance(step);
    }
    assert_eq!(decode_all(&mut decoder(), &mut wire).unwrap(), frames);
}

#[test]
fn write_queue_of_small_frames_is_one_chunk_holding_every_byte() {
    let mut q = WriteQueue::new();
    q.push(&request(1, b"small"), MAX).unwrap();
    q.push(&request(2, b"also small"), MAX).unwrap();
    assert!(q.is_one_chunk());
    assert_eq!(q.chunk().len(), q.remaining(), "one write takes it all");

    let big = Bytes::from(vec![9u8; FLATTEN_BELOW]);
    q.push(
        &Frame::Data {
            stream_id: 1,
            payload: big,
        },
        MAX,
    )
    .unwrap();
    let end = Frame::End {
        stream_id: 1,
        payload: Bytes::from_static(b"tail"),
    };
    q.push(&end, MAX).unwrap();
    assert!(!q.is_one_chunk(), "a large payload is a chunk of its own");
    // Past the large payload, only the flattened END is left.
    let tail = end.wire_len();
    q.advance(q.remaining() - tail);
    assert!(q.is_one_chunk());
    assert_eq!(q.chunk().len(), tail);
}

fn arb_utf8(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..max).prop_map(|v| v.into_iter().collect())
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let payload = proptest::collection::vec(any::<u8>(), 0..40_000).prop_map(Bytes::from);
    let headers = proptest::collection::vec(
        (
            arb_utf8(8).prop_filter("non-empty", |s| !s.is_empty()),
            arb_utf8(16),
        ),
        0..6,
    )
    .prop_map(|v| v.into_iter().collect::<HeaderMap>());
    prop_oneof![
        (
            any::<u64>(),
            arb_utf8(40).prop_filter("non-empty", |s| !s.is_empty()),
            headers,
            payload.clone(),
            proptest::option::of(1u64..100_000)
        )
            .prop_map(|(stream_id, path, headers, payload, ms)| Frame::Request(
                RequestFrame {
                    stream_id,
                    path: path.into(),
                    headers,
                    payload,
                    timeout: ms.map(Duration::from_millis),
                }
            )),
        (any::<u64>(), payload.clone())
            .prop_map(|(stream_id, payload)| Frame::Data { stream_id, payload }),
        (any::<u64>(), payload).prop_map(|(stream_id, payload)| Frame::End { stream_id, payload }),
        (any::<u64>(), any::<u32>(), arb_utf8(60)).prop_map(|(stream_id, code, m)| Frame::Error {
            stream_id,
            code: ErrorCode::from_u32(code),
            message: m.into(),
        }),
        any::<u64>().prop_map(|stream_id| Frame::Cancel { stream_id }),
        (any::<u64>(), any::<u32>(), arb_utf8(60)).prop_map(|(id, code, m)| Frame::GoAway {
            last_stream_id: id,
            code: ErrorCode::from_u32(code),
            message: m.into(),
        }),
        any::<u64>().prop_map(|opaque| Frame::Ping { opaque }),
        any::<u64>().prop_map(|opaque| Frame::Pong { opaque }),
        (any::<u64>(), any::<u32>()).prop_map(|(stream_id, increment)| Frame::WindowUpdate {
            stream_id,
            increment
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_decode_round_trips_at_any_split(
        frames in proptest::collection::vec(arb_frame(), 1..8),
        splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut q = WriteQueue::new();
        for f in &frames {
            q.push(f, MAX).unwrap();
        }
        let wire = q.copy_to_bytes(q.remaining());
        let mut cuts: Vec<usize> = splits.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut dec = decoder();
        let mut buf = dec.new_buffer();
        let mut out = Vec::new();
        let mut at = 0;
        for cut in cuts {
            buf.extend_from_slice(&wire[at..cut]);
            at = cut;
            out.extend(decode_all(&mut dec, &mut buf).unwrap());
        }
        prop_assert_eq!(out, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut dec = FrameDecoder::new(4096, 4096);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = dec.decode_frame(&mut buf) {}
        prop_assert!(buf.capacity() <= 4096 + bytes.len());
    }
}

#[test]
fn a_large_frame_gets_a_buffer_of_its_exact_size() {
    let frame = Frame::Data {
        stream_id: 9,
        payload: Bytes::from((0..3 << 20).map(|i| i as u8).collect::<Vec<u8>>()),
    };
    let whole = encode(&frame);
    let mut dec = decoder();
    let mut buf = dec.new_buffer();
    buf.extend_from_slice(&whole[..1000]);
    assert_eq!(dec.decode_frame(&mut buf).unwrap(), None);
    assert_eq!(buf.capacity(), whole.len(), "sized to the frame, no more");
    assert_eq!(
        &buf[..],
        &whole[..1000],
        "the bytes already read moved along"
    );
    buf.extend_from_slice(&whole[1000..]);
    assert_eq!(buf.capacity(), whole.len(), "the rest fit without growing");
    assert_eq!(dec.decode_frame(&mut buf).unwrap(), Some(frame));
    assert!(buf.is_empty());
    assert!(
        buf.capacity() <= INITIAL_READ_CAPACITY,
        "no large buffer is kept"
    );
}

/// One frame of [`frames_split_off_a_spare_are_never_overwritten`]: large (over 2 MiB,
/// so it takes the large-buffer path) or small, and whether the test keeps it.
#[derive(Debug, Clone)]
struct SpareCase {
    large: bool,
    /// Bytes over 2 MiB of a large frame, so sizes differ and some do not fit the spare.
    extra: usize,
    keep: bool,
}

fn spare_case() -> impl Strategy<Value = SpareCase> {
    (any::<bool>(), 0usize..(1 << 20), any::<bool>()).prop_map(|(large, extra, keep)| SpareCase {
        large,
        extra,
        keep,
    })
}

#[test]
fn frames_larger_than_a_medium_buffer_are_read_into_buffers_that_get_reused() {
    const FRAME: usize = 1024 * 1024;
    let mut dec = decoder().with_spare();
    let mut buf = dec.new_buffer();
    let wire: Vec<u8> = (0..3u64)
        .flat_map(|i| {
            encode(&Frame::Data {
                stream_id: i + 1,
                payload: Bytes::from(vec![i as u8; FRAME]),
            })
        })
        .collect();
    // As a socket delivers a steady flow, each frame followed at once by the next; a
    // caller consumes each frame and drops it.
    let mut rest = wire.as_slice();
    let mut starts = Vec::new();
    while starts.len() < 3 {
        while let Some(frame) = dec.decode_frame(&mut buf).unwrap() {
            assert!(frame.payload().iter().all(|&b| b == starts.len() as u8));
            starts.push(frame.payload().as_ptr() as usize);
        }
        if starts.len() == 2 {
            // The first frame's buffer, left once the second began, was retired (a
            // buffer the frame had filled exactly would have been dropped instead).
            assert!(dec.spare_capacity() > FRAME, "{}", dec.spare_capacity());
        }
        dec.reserve_for_read(&mut buf, 4096);
        let n = (buf.capacity() - buf.len()).min(rest.len()).min(64 * 1024);
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    assert_eq!(
        starts[2], starts[0],
        "the third frame reuses the first one's buffer"
    );
    assert!(dec.spare_capacity() <= RETIRED_BYTES);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever mix of large and small frames, read sizes and frames kept alive: every
    /// frame keeps its own bytes to the end (a spare is reused only once nothing split
    /// off it is alive), and the decoder holds one spare at most.
    #[test]
    fn frames_split_off_a_spare_are_never_overwritten(
        cases in proptest::collection::vec(spare_case(), 1..8),
        read in (64usize * 1024)..(1 << 20),
    ) {
        let mut wire = BytesMut::new();
        for (i, case) in cases.iter().enumerate() {
            let len = if case.large { (2 << 20) + case.extra } else { 100 };
            let frame = Frame::Data {
                stream_id: i as u64,
                payload: Bytes::from(vec![i as u8; len]),
            };
            encode_frame(&frame, MAX, &mut wire).unwrap();
        }
        let mut dec = FrameDecoder::new(MAX, INITIAL_READ_CAPACITY).with_spare();
        let mut buf = dec.new_buffer();
        let mut kept = Vec::new();
        for chunk in wire.chunks(read) {
            buf.extend_from_slice(chunk);
            while let Some(frame) = dec.decode_frame(&mut buf).unwrap() {
                let i = frame.stream_id() as usize;
                prop_assert!(frame.payload().iter().all(|&b| b == i as u8));
                if cases[i].keep {
                    kept.push(frame);
                }
                prop_assert!(dec.spare_capacity() <= MAX);
            }
        }
        prop_assert!(buf.is_empty());
        for frame in &kept {
            let i = frame.stream_id() as usize;
            prop_assert!(
                frame.payload().iter().all(|&b| b == i as u8),
                "frame {} was overwritten", i
            );
        }
    }
}

/// The header-only examples of PROTOCOL.md §8.3, byte for byte.
#[test]
fn protocol_md_header_examples_match_the_encoder() {
    let doc = include_str!("../../PROTOCOL.md");
    let cases = [
        (
            "END stream 1, no payload:",
            Frame::End {
                stream_id: 1,
                payload: Bytes::new(),
            },
        ),
        (
            "GOAWAY last_stream_id 7, NoError:",
            Frame::GoAway {
                last_stream_id: 7,
                code: ErrorCode::NoError,
                message: Utf8Bytes::default(),
            },
        ),
        ("PING opaque 0xdead:", Frame::Ping { opaque: 0xdead }),
        (
            "WINDOW_UPDATE stream 1, 1 MiB:",
            Frame::WindowUpdate {
                stream_id: 1,
                increment: 1 << 20,
            },
        ),
    ];
    for (label, frame) in cases {
        let line = doc
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("PROTOCOL.md has no line {label:?}"));
        let documented: Vec<u8> = line[label.len()..]
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        assert_eq!(&encode(&frame)[..], &documented[..], "{label}");
    }
}

/// Feeds `wire` to `dec` as reads from a socket would: into the room the buffer has (at
/// most 64 KiB at a time), decoding after each read.
fn read_like_a_socket(dec: &mut FrameDecoder, buf: &mut BytesMut, wire: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut rest = wire;
    loop {
        while let Some(frame) = dec.decode_frame(buf).unwrap() {
            frames.push(frame);
        }
        if rest.is_empty() {
            return frames;
        }
        dec.reserve_for_read(buf, 4096);
        let n = (buf.capacity() - buf.len()).min(rest.len()).min(64 * 1024);
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

/// A DATA frame's bytes with `len` bytes of payload, each the stream id's low byte.
fn filled_data(stream_id: u64, len: usize) -> BytesMut {
    encode(&Frame::Data {
        stream_id,
        payload: Bytes::from(vec![stream_id as u8; len]),
    })
}

/// The one frame `wire` decodes to, read as from a socket.
fn only_frame(dec: &mut FrameDecoder, buf: &mut BytesMut, wire: &[u8]) -> Frame {
    let [frame]: [Frame; 1] = read_like_a_socket(dec, buf, wire)
        .try_into()
        .unwrap_or_else(|frames: Vec<Frame>| panic!("one frame, got {}", frames.len()));
    frame
}

#[test]
fn medium_frames_reuse_a_retired_buffer_once_its_frames_are_dropped() {
    let mut dec = decoder().with_spare();
    let mut buf = dec.new_buffer();
    // Frames go to a medium buffer, one after another, each dropped at once as a caller
    // consumes it; the first frame of each buffer sits at its start.
    let mut starts = Vec::new();
    let mut in_buffer = 0;
    for i in 0..64u64 {
        let before = dec.spare();
        let frame = only_frame(&mut dec, &mut buf, &filled_data(i, 64 * 1024));
        assert!(frame.payload().iter().all(|&b| b == i as u8));
        if dec.spare() != before {
            starts.push(frame.payload().as_ptr() as usize);
            in_buffer = 0;
        }
        in_buffer += 1;
        assert!(
            in_buffer <= MEDIUM_BUFFER / (64 * 1024),
            "frames share a buffer"
        );
    }
    assert!(starts.len() > 10, "{} buffer switches", starts.len());
    let distinct: std::collections::HashSet<_> = starts.iter().collect();
    assert!(
        distinct.len() <= 2,
        "every switch after the first reuses a retired buffer: {} places",
        distinct.len()
    );
    assert!(dec.spare_capacity() <= RETIRED_BYTES);
    dec.release_spare();
    assert_eq!((dec.spare(), dec.spare_capacity()), (None, 0));
}

#[test]
fn the_most_recently_retired_free_buffer_is_reused_first() {
    const FRAME: usize = 200 * 1024;
    let mut dec = decoder().with_spare();
    let mut buf = dec.new_buffer();
    // Four frames kept alive at once: each lands in a buffer of its own, and the first
    // three buffers are retired, in that order, as the next frame moves on.
    let kept: Vec<Frame> = (1..=4)
        .flat_map(|i| read_like_a_socket(&mut dec, &mut buf, &filled_data(i, FRAME)))
        .collect();
    let starts: Vec<usize> = kept.iter().map(|f| f.payload().as_ptr() as usize).collect();
    let distinct: std::collections::HashSet<_> = starts.iter().collect();
    assert_eq!(distinct.len(), 4, "one buffer per frame kept alive");
    drop(kept);
    // All three are free now; the fifth frame takes the one retired last, the third
    // frame's, whose memory is the likeliest still in cache.
    let fifth = only_frame(&mut dec, &mut buf, &filled_data(5, FRAME));
    assert!(fifth.payload().iter().all(|&b| b == 5));
    assert_eq!(fifth.payload().as_ptr() as usize, starts[2]);
}

#[test]
fn six_1_mib_responses_held_by_their_callers_leave_buffers_enough_to_reuse() {
    const FRAME: usize = 1024 * 1024;
    const HELD: usize = 6;
    let mut dec = decoder().with_spare();
    let mut buf = dec.new_buffer();
    // At 1 MiB × 64 in flight a client's callers hold several responses at once: each
    // lands in a buffer of its own, and the buffers left behind are retired for reuse.
    let held: Vec<Frame> = (1..=HELD as u64 + 1)
        .flat_map(|i| read_like_a_socket(&mut dec, &mut buf, &filled_data(i, FRAME)))
        .collect();
    let first_round: std::collections::HashSet<usize> =
        held.iter().map(|f| f.payload().as_ptr() as usize).collect();
    assert_eq!(first_round.len(), HELD + 1, "one buffer per frame held");
    assert!(
        dec.spare_capacity() >= HELD * FRAME,
        "{} bytes retired for {HELD} buffers of 1 MiB",
        dec.spare_capacity()
    );
    drop(held);
    // Once the callers drop them, the next responses land in those buffers, not in
    // fresh memory the kernel must fault in.
    for i in 10..10 + HELD as u64 {
        let frame = only_frame(&mut dec, &mut buf, &filled_data(i, FRAME));
        assert!(frame.payload().iter().all(|&b| b == i as u8));
        assert!(
            first_round.contains(&(frame.payload().as_ptr() as usize)),
            "frame {i} landed in fresh memory"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever frames a caller keeps and for how long, a reused buffer never overwrites
    /// a frame still alive, and the retired buffers stay within their bound.
    #[test]
    fn frames_split_off_a_retired_buffer_are_never_overwritten(
        keep in proptest::collection::vec(0usize..6, 40..80),
        sizes in proptest::collection::vec(16usize * 1024..1200 * 1024, 80),
    ) {
        let mut dec = decoder().with_spare();
        let mut buf = dec.new_buffer();
        let mut alive: Vec<(u8, usize, Frame, usize)> = Vec::new();
        for (i, (&hold, &size)) in keep.iter().zip(&sizes).enumerate() {
            let fill = i as u8;
            let wire = encode(&Frame::Data {
                stream_id: i as u64 + 1,
                payload: Bytes::from(vec![fill; size]),
            });
            for frame in read_like_a_socket(&mut dec, &mut buf, &wire) {
                alive.push((fill, size, frame, i + hold));
            }
            alive.retain(|(_, _, _, until)| *until > i);
            for (fill, size, frame, _) in &alive {
                prop_assert_eq!(frame.payload().len(), *size);
                prop_assert!(frame.payload().iter().all(|b| b == fill));
            }
            prop_assert!(dec.spare_capacity() <= RETIRED_BYTES + MAX);
        }
    }
}
