//! The request-plane suite (`common/request_suite.rs`) on every plane this build has:
//! TCP always, with no cargo feature; NATS with `nats`, against a real nats-server
//! started for the test; HTTP/2 with `http`. Each plane's own behaviour is in `tcp_plane.rs`,
//! `tcp_robustness.rs`, `tcp_closing.rs`, `nats_plane.rs` and `http_plane.rs`.

mod common;

use common::planes::{self, Options};
use common::request_suite as suite;
use planewire::planes::request::{
    EndpointPath, RequestPlaneClient, RequestPlaneServer, ServerLimits,
};

/// Limit the over-limit case uses.
const SMALL_LIMIT: usize = 64 * 1024;

/// `module::tcp`, `module::nats`, `module::http`: `case` on a server and client of each plane, set up
/// with `options`. A plane whose server cannot be started here (no nats-server outside
/// CI) is skipped.
macro_rules! on_every_plane {
    ($module:ident, $options:expr, $case:path $(, $arg:expr)*) => {
        mod $module {
            use super::*;

            async fn run<S: RequestPlaneServer, C: RequestPlaneClient>(server: &S, client: &C) {
                $case(server, client, |p: &EndpointPath| server.address(p) $(, $arg)*).await;
                server.shutdown().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                let pair = planes::tcp($options).await;
                run(&pair.server, &pair.client).await;
            }

            #[cfg(feature = "nats")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                let Some(pair) = planes::nats($options).await else {
                    return;
                };
                run(&pair.server, &pair.client).await;
            }

            #[cfg(feature = "http")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn http() {
                let pair = planes::http($options).await;
                run(&pair.server, &pair.client).await;
            }
        }
    };
}

fn defaults() -> Options {
    Options::default()
}

on_every_plane!(unary_echo, defaults(), suite::unary_echo);
on_every_plane!(
    headers_and_deadline_reach_the_handler,
    defaults(),
    suite::headers_and_deadline_reach_the_handler
);
on_every_plane!(streaming_in_order, defaults(), suite::streaming_in_order);
on_every_plane!(
    paced_stream_and_empty_stream,
    defaults(),
    suite::paced_stream_and_empty_stream
);
on_every_plane!(
    thousand_concurrent_calls,
    defaults(),
    suite::concurrent_calls,
    1000
);
on_every_plane!(
    cancellation_reaches_handler,
    defaults(),
    suite::cancellation_reaches_handler
);
on_every_plane!(
    timeout,
    Options {
        request_timeout: Some(suite::SHORT_TIMEOUT),
        ..defaults()
    },
    suite::timeout
);
on_every_plane!(unknown_endpoint, defaults(), suite::unknown_endpoint);
on_every_plane!(
    over_limit,
    Options {
        message_limit: Some(SMALL_LIMIT),
        ..defaults()
    },
    suite::over_limit,
    2 * SMALL_LIMIT
);
on_every_plane!(handler_error, defaults(), suite::handler_error);
on_every_plane!(
    overloaded_endpoint_answers_at_once,
    Options {
        limits: ServerLimits {
            max_concurrent_requests: 1,
            ..ServerLimits::default()
        },
        ..defaults()
    },
    suite::overloaded_endpoint_answers_at_once
);
on_every_plane!(
    shutdown_drains_in_flight,
    defaults(),
    suite::shutdown_drains_in_flight
);
on_every_plane!(
    drain_timeout_cancels_what_is_left,
    Options {
        limits: ServerLimits {
            drain_timeout: suite::SHORT_DRAIN,
            ..ServerLimits::default()
        },
        ..defaults()
    },
    suite::drain_timeout_cancels_what_is_left
);
