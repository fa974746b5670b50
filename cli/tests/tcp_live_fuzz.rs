//! A live-server fuzzer: for a bounded time, mutated frames, truncations, garbage, slow
//! writers and non-reading readers are thrown at a running `planewire serve`. After each
//! case the process must be alive, a fresh connection must complete an echo, and its
//! memory must stay under a stated bound.
//!
//! `PLANEWIRE_LIVE_FUZZ_SECONDS` (default 5) sets the time; `PLANEWIRE_LIVE_FUZZ_SEED`
//! replays a run (the seed is printed, and named in every failure).

mod common;

use common::planewire_bin;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use planewire::codec::{ErrorCode, Frame, encode_frame};
use planewire_testkit::raw::*;
use tokio::io::AsyncWriteExt;

const ENDPOINT: &str = "t/w/echo";
/// Responses per request: enough that a peer that stops reading meets backpressure.
const RESPONSES: usize = 2000;
/// Resident memory the server may reach, whatever was thrown at it.
const RSS_BOUND: u64 = 256 << 20;

fn valid_frame(rng: &mut fastrand::Rng) -> Frame {
    let stream_id = rng.u64(0..8);
    match rng.u8(0..6) {
        0 | 1 => request_to(
            stream_id,
            ENDPOINT,
            Bytes::from(vec![rng.u8(..); rng.usize(0..2048)]),
            rng.bool().then(|| Duration::from_millis(rng.u64(1..2000))),
        ),
        2 => Frame::Cancel { stream_id },
        3 => Frame::WindowUpdate {
            stream_id,
            increment: rng.u32(..),
        },
        4 => Frame::Ping {
            opaque: rng.u64(..),
        },
        _ => Frame::GoAway {
            last_stream_id: stream_id,
            code: ErrorCode::from_u32(rng.u32(0..12)),
            message: "fuzz".into(),
        },
    }
}

fn valid_wire(rng: &mut fastrand::Rng, frames: usize) -> BytesMut {
    let mut wire = BytesMut::new();
    for _ in 0..frames {
        encode_frame(&valid_frame(rng), usize::MAX, &mut wire).unwrap();
    }
    wire
}

/// One misbehaving peer, chosen and shaped by `rng`.
async fn attack(rng: &mut fastrand::Rng, address: &str) -> &'static str {
    let mut raw = raw_connect(address).await;
    let case = rng.u8(0..6);
    let frames = rng.usize(1..20);
    let mut wire = valid_wire(rng, frames);
    let name = match case {
        0 => {
            for _ in 0..rng.usize(1..8) {
                let at = rng.usize(0..wire.len());
                wire[at] = rng.u8(..);
            }
            "mutated bytes"
        }
        1 => {
            wire.truncate(rng.usize(0..wire.len()));
            "truncated"
        }
        2 => {
            let len = rng.usize(1..4096);
            wire = (0..len).map(|_| rng.u8(..)).collect::<Vec<_>>()[..].into();
            "garbage"
        }
        3 => "valid frames, random ids",
        4 => "slow writer",
        _ => "non-reader",
    };
    // Writes can fail once the server has closed on bad input: that is its right.
    match case {
        4 => {
            for chunk in wire.chunks(rng.usize(1..64)) {
                if raw.stream.write_all(chunk).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(rng.u64(0..5))).await;
            }
        }
        5 => {
            let flood = request_to(1, ENDPOINT, Bytes::from(vec![9u8; 64 * 1024]), None);
            let mut wire = BytesMut::new();
            encode_frame(&flood, usize::MAX, &mut wire).unwrap();
            let grant = Frame::WindowUpdate {
                stream_id: 1,
                increment: u32::MAX,
            };
            encode_frame(&grant, usize::MAX, &mut wire).unwrap();
            let _ = raw.stream.write_all(&wire).await;
            tokio::time::sleep(Duration::from_millis(rng.u64(50..300))).await;
        }
        _ => {
            let _ = raw.stream.write_all(&wire).await;
        }
    }
    if rng.bool() {
        let _ = raw.stream.shutdown().await;
    }
    name
}

/// A fresh, polite connection gets its echo: every response and END.
async fn assert_serves(address: &str, context: &str) {
    let mut raw = raw_connect(address).await;
    raw.send(&request_to(1, ENDPOINT, Bytes::from_static(b"ok"), None))
        .await;
    let mut items = 0;
    loop {
        match raw.next_frame().await {
            Some(Frame::Data { payload, .. }) => {
                assert_eq!(payload, "ok", "{context}");
                items += 1;
            }
            Some(Frame::End { payload, .. }) => {
                assert_eq!(payload, "ok", "{context}");
                break;
            }
            other => panic!("{context}: the echo got {other:?}"),
        }
    }
    assert_eq!(items + 1, RESPONSES, "{context}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_server_survives_whatever_peers_send() {
    let seconds: u64 = std::env::var("PLANEWIRE_LIVE_FUZZ_SECONDS")
        .ok()
        .map_or(5, |s| {
            s.parse()
                .expect("PLANEWIRE_LIVE_FUZZ_SECONDS: whole seconds")
        });
    let seed: u64 = std::env::var("PLANEWIRE_LIVE_FUZZ_SEED")
        .ok()
        .map_or_else(|| fastrand::u64(..), |s| s.parse().expect("a u64 seed"));
    eprintln!("live fuzz: seed {seed}, {seconds} s");
    let mut rng = fastrand::Rng::with_seed(seed);
    let setup = planewire_bin::Setup::file("10")
        .env("DYN_TCP_FRAME_TIMEOUT", "1")
        .env("DYN_TCP_MAX_MESSAGE_SIZE", "1048576");
    let responses = RESPONSES.to_string();
    let mut server = setup.serve(&["--endpoint", ENDPOINT, "--responses", &responses]);
    let pid = server.process.pid();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut cases = 0;
    let mut peak = 0;
    while Instant::now() < deadline {
        let name = attack(&mut rng, &server.address).await;
        cases += 1;
        let context = format!("seed {seed}, case {cases} ({name})");
        assert!(
            server.process.try_wait().is_none(),
            "{context}: the server died"
        );
        assert_serves(&server.address, &context).await;
        peak = peak.max(rss_bytes(pid));
        assert!(peak < RSS_BOUND, "{context}: server RSS {peak} bytes");
    }
    eprintln!(
        "live fuzz: {cases} cases, peak server RSS {} KiB",
        peak / 1024
    );
    assert!(server.process.terminate().success());
}
