//! The SUB side: one connection per publisher, kept up for as long as discovery lists
//! the publisher.
//!
//! A lost or refused connection is tried again at once, then after 50 ms, doubling up
//! to [`ZMQ_RECONNECT_MAX`], each wait jittered down to half so that subscribers do not
//! reconnect in step; a publisher that discovery reports again is tried at once. The
//! subscription's queue outlives connections, so events a publisher sent while the
//! connection was down show up as a gap in its sequence when the next one arrives.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::connection;
use super::message::parse;
use super::zmtp::{self, Command, Incoming, SocketType, ZmtpError};
use crate::planes::events::queue::{DRAIN_BEFORE_WAKE, SubscriberQueue};

/// The longest wait between two connection attempts to a publisher discovery lists.
pub const ZMQ_RECONNECT_MAX: Duration = Duration::from_secs(1);
/// The wait after the first failed attempt; each further failure doubles it.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
/// A connect that has not completed by then counts as failed (a black-holed address).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message read from a publisher; a larger one is skipped and counted as
/// malformed, and the connection goes on.
pub const ZMQ_MAX_MESSAGE: usize = 64 << 20;

/// Receives one publisher's events into a subscription's queue, until cancelled.
pub(super) struct Receiver {
    pub(super) address: String,
    pub(super) subject: Arc<str>,
    pub(super) topic: Arc<str>,
    pub(super) queue: Arc<SubscriberQueue>,
    /// Cuts a reconnect wait short: discovery reported the publisher again.
    pub(super) retry_now: Arc<Notify>,
}

impl Receiver {
    pub(super) async fn run(self) {
        let Some(target) = self.address.strip_prefix("tcp://") else {
            tracing::warn!(address = %self.address, "skipping a zmq publisher whose address is not tcp://host:port");
            return;
        };
        let mut wait = Duration::ZERO;
        let mut failures = 0u64;
        loop {
            match self.session(target).await {
                Session::Lost(err) => {
                    tracing::debug!(address = %self.address, %err, "zmq publisher connection lost; reconnecting");
                    wait = Duration::ZERO;
                    failures = 0;
                }
                Session::Failed(err) => {
                    failures += 1;
                    // A publisher that is starting, or gone while its record lives on,
                    // refuses every second until then: log the 1st, 2nd, 4th… only.
                    if failures.is_power_of_two() {
                        tracing::debug!(address = %self.address, %err, failures, "cannot reach a zmq publisher; retrying");
                    }
                    wait = if wait.is_zero() {
                        RECONNECT_FIRST
                    } else {
                        (wait * 2).min(ZMQ_RECONNECT_MAX)
                    };
                }
            }
            if wait.is_zero() {
                continue;
            }
            let jittered = wait.mul_f64(0.5 + fastrand::f64() / 2.0);
            tokio::select! {
                _ = tokio::time::sleep(jittered) => {}
                _ = self.retry_now.notified() => {}
            }
        }
    }

    /// One connection: connect, handshake, subscribe, then receive until it fails.
    async fn session(&self, target: &str) -> Session {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Session::Failed(ZmtpError::Io(err)),
            Err(_) => {
                return Session::Failed(ZmtpError::Protocol(format!(
                    "no connection within {CONNECT_TIMEOUT:?}"
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let handshake = connection::handshake(stream, SocketType::Sub, ZMQ_MAX_MESSAGE);
        let (mut reader, mut writer) =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(halves)) => halves,
                Ok(Err(err)) => return Session::Failed(err),
                Err(_) => {
                    return Session::Failed(ZmtpError::Protocol(format!(
                        "no handshake within {HANDSHAKE_TIMEOUT:?}"
                    )));
                }
            };
        let subscription = zmtp::subscription(self.subject.as_bytes());
        if let Err(err) = writer.write_all(&subscription).await {
            return Session::Failed(ZmtpError::Io(err));
        }
        // `writer` stays alive for the whole session: dropping it would shut down the
        // write side, which the publisher takes for the subscriber leaving.
        loop {
            let first = reader.next().await;
            if let Err(err) = self.handle(first) {
                return Session::Lost(err);
            }
            // Take what has already arrived before waking the subscriber: one wake per
            // burst instead of one per event. The reader is cancel-safe, so dropping
            // an unfinished `next` loses nothing.
            for _ in 0..DRAIN_BEFORE_WAKE {
                let Some(item) = reader.next().now_or_never() else {
                    break;
                };
                if let Err(err) = self.handle(item) {
                    self.queue.notify();
                    return Session::Lost(err);
                }
            }
            self.queue.notify();
        }
    }

    fn handle(&self, item: Result<Incoming, ZmtpError>) -> Result<(), ZmtpError> {
        match item? {
            Incoming::Message(frames) => match parse(frames, &self.subject, &self.topic) {
                Ok(Some(event)) => self.queue.push(event),
                Ok(None) => {}
                Err(reason) => self.queue.reject(&self.address, &reason),
            },
            Incoming::Discarded(reason) => self.queue.reject(&self.address, &reason),
            Incoming::Command(Command::Error(reason)) => {
                return Err(ZmtpError::Protocol(format!(
                    "the publisher sent ERROR: {reason}"
                )));
            }
            Incoming::Command(_) => {}
        }
        Ok(())
    }
}

enum Session {
    /// Connected, then lost: reconnect at once.
    Lost(ZmtpError),
    /// Never got as far as receiving: back off.
    Failed(ZmtpError),
}
