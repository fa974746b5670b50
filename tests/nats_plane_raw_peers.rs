//! The NATS request plane's server (`PROTOCOL.md` §11) as a caller in another language
//! meets it: a request published on a plain NATS connection with headers set by hand,
//! the responses read off its reply subject. The plane through its own client is in
//! `nats_plane.rs`.

use bytes::Bytes;
use futures::StreamExt;
use planewire::planes::request::nats::NatsRequestServer;
use planewire::planes::request::{
    Handler, HandlerError, Request, RequestPlaneServer, ServerLimits, unary_handler,
};
use planewire::vocab::ErrorCode;
use planewire_testkit::nats::NatsServer;
use planewire_testkit::peer::{first_token, never, reporting};
use planewire_testkit::tcp::path;
use planewire_testkit::within;

/// One request from a plain connection to a request-plane server, each on a NATS
/// connection of its own. Fields drop in order: nats-server last.
struct PlainCall {
    server: NatsRequestServer,
    replies: async_nats::Subscriber,
    _plain: async_nats::Client,
    _nats: NatsServer,
}

/// nats-server, a server with `handler` at `endpoint`, and a request to it published
/// with `headers` and a reply subject of the caller's, once the server has that
/// subscription. `None` where NATS tests are skipped (see `NatsServer::start`).
async fn plain_call(
    endpoint: &str,
    handler: impl Handler,
    headers: async_nats::HeaderMap,
) -> Option<PlainCall> {
    let nats = NatsServer::start()?;
    let connection = async_nats::connect(nats.url()).await.unwrap();
    let server = NatsRequestServer::new(connection, ServerLimits::default())
        .await
        .unwrap();
    server.register(&path(endpoint), handler).await.unwrap();
    let plain = async_nats::connect(nats.url()).await.unwrap();
    let inbox = plain.new_inbox();
    let replies = plain.subscribe(inbox.clone()).await.unwrap();
    plain.flush().await.unwrap();
    let subject = server.address(&path(endpoint));
    plain
        .publish_with_reply_and_headers(subject, inbox, headers, Bytes::new())
        .await
        .unwrap();
    plain.flush().await.unwrap();
    Some(PlainCall {
        server,
        replies,
        _plain: plain,
        _nats: nats,
    })
}

/// The value of header `name` of `message`, which must have it.
fn header<'a>(message: &'a async_nats::Message, name: &str) -> &'a str {
    let value = message.headers.as_ref().and_then(|h| h.get(name));
    value
        .unwrap_or_else(|| panic!("no {name} in {:?}", message.headers))
        .as_str()
}

/// `Pw-Timeout-Ms` from a plain caller: a handler that never answers is cancelled when
/// the deadline passes, and the caller gets the error marker (`Pw-Seq: 0`, code 7)
/// instead of silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_a_plain_request_carries_ends_a_silent_handler_with_a_marker() {
    let (handler, mut tokens) = reporting(never);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Pw-Timeout-Ms", "200");
    let Some(mut call) = plain_call("silent", handler, headers).await else {
        return;
    };
    let token = first_token(&mut tokens).await;
    let marker = within("the error marker", call.replies.next())
        .await
        .unwrap();
    assert_eq!(header(&marker, "Pw-Seq"), "0");
    assert_eq!(header(&marker, "Nats-Service-Error-Code"), "7");
    let message = header(&marker, "Nats-Service-Error");
    assert!(message.contains("deadline"), "{message}");
    within("the handler's cancellation", token.cancelled()).await;
    call.server.shutdown().await;
}

/// A handler error whose message holds line breaks (even a NATS protocol line) and runs
/// to 10 KiB reaches a plain caller as one error marker whose message is one header
/// line of at most 4 KiB, control characters replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_reaches_a_plain_caller_as_one_header_line() {
    let message = format!(
        "first line\r\nPUB injected 2\r\nhi\r\n{}",
        "x".repeat(10_000)
    );
    let handler = unary_handler(move |_req: Request| {
        let message = message.clone();
        async move { Err(HandlerError(message)) }
    });
    let headers = async_nats::HeaderMap::new();
    let Some(mut call) = plain_call("failing", handler, headers).await else {
        return;
    };
    let marker = within("the error marker", call.replies.next())
        .await
        .unwrap();
    assert_eq!(header(&marker, "Pw-Seq"), "0");
    let code = ErrorCode::Handler.to_u32().to_string();
    assert_eq!(header(&marker, "Nats-Service-Error-Code"), code);
    let message = header(&marker, "Nats-Service-Error");
    assert!(
        message.starts_with("first line  PUB injected 2  hi  xxx"),
        "{message}"
    );
    assert!(message.len() <= 4096, "{} bytes", message.len());
    assert!(!message.chars().any(char::is_control), "{message:?}");
    call.server.shutdown().await;
}
