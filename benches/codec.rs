//! Codec micro-benchmarks: encode and decode throughput per payload size, next to a plain
//! `memcpy` of the same size so decode cost reads as a ratio to copying.

use bytes::{Buf, Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use planewire::codec::{Frame, FrameDecoder, HeaderMap, RequestFrame, WriteQueue, encode_frame};

const MAX: usize = 64 * 1024 * 1024;
const SIZES: [(&str, usize); 4] = [
    ("64B", 64),
    ("1KiB", 1024),
    ("64KiB", 64 * 1024),
    ("1MiB", 1024 * 1024),
];

fn request(payload: Bytes) -> Frame {
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    Frame::Request(RequestFrame {
        stream_id: 42,
        path: "dynamo/backend/generate/1".into(),
        headers,
        payload,
        timeout: None,
    })
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, size) in SIZES {
        let frame = request(Bytes::from(vec![7u8; size]));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            let mut q = WriteQueue::new();
            b.iter(|| {
                q.push(black_box(&frame), MAX).unwrap();
                // Drain as a socket write would, so the queue stays small.
                let n = q.remaining();
                q.advance(n);
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, size) in SIZES {
        let mut wire = BytesMut::new();
        encode_frame(&request(Bytes::from(vec![7u8; size])), MAX, &mut wire).unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            let mut dec = FrameDecoder::new(MAX, MAX);
            let mut buf = dec.new_buffer();
            b.iter(|| {
                // Bytes arriving from the socket land in the read buffer: the copy here
                // stands for the kernel's copy in `read`, present in any design.
                buf.extend_from_slice(&wire);
                black_box(dec.decode_frame(&mut buf).unwrap().unwrap())
            })
        });
    }
    group.finish();
}

fn memcpy(c: &mut Criterion) {
    let mut group = c.benchmark_group("memcpy");
    let size = 1024 * 1024;
    let src = vec![7u8; size];
    let mut dst = vec![0u8; size];
    group.throughput(Throughput::Bytes(size as u64));
    group.bench_function("1MiB", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    group.finish();
}

criterion_group!(benches, encode, decode, memcpy);
criterion_main!(benches);
