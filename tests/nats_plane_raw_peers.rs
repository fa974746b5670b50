//! The NATS request plane (`PROTOCOL.md` §11) as peers in another language meet it: its
//! server called from a plain NATS connection (a request published with headers set by
//! hand, the responses read off its reply subject), and its client answered by a plain
//! subscriber that sends what a real server never would. The plane through its own
//! client and server is in `nats_plane.rs`.

use bytes::Bytes;
use futures::{StreamExt, stream};
use planewire::planes::request::nats::{
    NatsRequestClient, NatsRequestConfig, NatsRequestServer, subject,
};
use planewire::planes::request::{
    CancellationToken, Handler, HandlerError, Request, RequestError, RequestPlaneClient,
    RequestPlaneServer, ServerLimits, unary_handler,
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
    plain: async_nats::Client,
    /// The endpoint's subject, and the caller's reply subject.
    subject: String,
    inbox: String,
    _nats: NatsServer,
}

impl PlainCall {
    /// Publishes another request, with no headers, answered on the same reply subject.
    async fn again(&self, payload: &'static str) {
        let (subject, inbox) = (self.subject.clone(), self.inbox.clone());
        let payload = Bytes::from_static(payload.as_bytes());
        let publish = self.plain.publish_with_reply(subject, inbox, payload);
        publish.await.unwrap();
        self.plain.flush().await.unwrap();
    }
}

/// nats-server, a server with `handler` at `endpoint`, and a request to it published
/// with `headers`, `payload` and a reply subject of the caller's, once the server has
/// that subscription. `None` where NATS tests are skipped (see `NatsServer::start`).
async fn plain_call(
    endpoint: &str,
    handler: impl Handler,
    headers: async_nats::HeaderMap,
    payload: &'static str,
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
    let payload = Bytes::from_static(payload.as_bytes());
    plain
        .publish_with_reply_and_headers(subject.clone(), inbox.clone(), headers, payload)
        .await
        .unwrap();
    plain.flush().await.unwrap();
    Some(PlainCall {
        server,
        replies,
        plain,
        subject,
        inbox,
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
    let Some(mut call) = plain_call("silent", handler, headers, "").await else {
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
    let Some(mut call) = plain_call("failing", handler, headers, "").await else {
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

/// A handler streaming each byte of the payload as an item, whose stream ends one poll
/// after its last item: the server cannot send the end with that item, as it does for a
/// unary handler, and sends the end marker on its own.
fn bytes_then_a_late_end(
    req: Request,
    _cancel: CancellationToken,
) -> impl futures::Stream<Item = Result<Bytes, HandlerError>> {
    let items: Vec<_> = (0..req.payload.len())
        .map(|i| Ok(req.payload.slice(i..=i)))
        .collect();
    let late_end = stream::once(tokio::task::yield_now()).filter_map(|()| async { None });
    stream::iter(items).chain(late_end)
}

/// The next message on the caller's reply subject.
async fn next_reply(call: &mut PlainCall) -> async_nats::Message {
    within("a reply", call.replies.next()).await.unwrap()
}

/// §11's responses as a plain caller reads them: one message per item, `Pw-Seq` 0, 1,
/// 2, …, then one more with the next `Pw-Seq`, `Pw-End: 1` and an empty payload; nothing
/// follows it (the next message on the reply subject answers the next request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_caller_reads_a_stream_numbered_from_0_and_its_empty_end_marker() {
    let headers = async_nats::HeaderMap::new();
    let Some(mut call) = plain_call("bytes", bytes_then_a_late_end, headers, "abc").await else {
        return;
    };
    for (seq, item) in ["a", "b", "c"].into_iter().enumerate() {
        let response = next_reply(&mut call).await;
        assert_eq!(header(&response, "Pw-Seq"), seq.to_string());
        assert_eq!(response.payload, item);
        let end = response.headers.as_ref().and_then(|h| h.get("Pw-End"));
        assert!(end.is_none(), "response {seq} ends the stream: {end:?}");
    }
    let end = next_reply(&mut call).await;
    assert_eq!(header(&end, "Pw-Seq"), "3");
    assert_eq!(header(&end, "Pw-End"), "1");
    assert!(end.payload.is_empty(), "{:?}", end.payload);
    let code = end.headers.as_ref().unwrap().get("Nats-Service-Error-Code");
    assert!(code.is_none(), "the end of a success is no error: {code:?}");
    call.again("z").await;
    let next = next_reply(&mut call).await;
    assert_eq!(
        (header(&next, "Pw-Seq"), &next.payload[..]),
        ("0", &b"z"[..])
    );
    call.server.shutdown().await;
}

/// §11's unary call as a plain caller reads it: one message, `Pw-Seq: 0` and
/// `Pw-End: last`, carrying the response, and no end marker after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_caller_gets_a_unary_reply_as_one_message_marked_last() {
    let echo = unary_handler(|req: Request| async move { Ok(req.payload) });
    let headers = async_nats::HeaderMap::new();
    let Some(mut call) = plain_call("echo", echo, headers, "ping").await else {
        return;
    };
    let reply = next_reply(&mut call).await;
    assert_eq!(header(&reply, "Pw-Seq"), "0");
    assert_eq!(header(&reply, "Pw-End"), "last");
    assert_eq!(reply.payload, "ping");
    call.again("again").await;
    let next = next_reply(&mut call).await;
    assert_eq!(
        header(&next, "Pw-Seq"),
        "0",
        "the reply before had a follower"
    );
    assert_eq!(next.payload, "again");
    call.server.shutdown().await;
}

/// A stand-in server: a plain subscriber on `subject` answering every request with
/// `replies` (`(Pw-Seq header or None, payload)`), to feed the client what a real
/// server never sends.
async fn fake_server(
    nats: &NatsServer,
    subject: String,
    replies: Vec<(Option<&'static str>, &'static str)>,
) -> tokio::task::JoinHandle<()> {
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let mut requests = raw.subscribe(subject).await.unwrap();
    // A request answered (503) after the SUB proves the server has processed it.
    let _ = raw.request(raw.new_inbox(), Bytes::new()).await;
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let reply = request.reply.unwrap();
            for (seq, payload) in &replies {
                let mut headers = async_nats::HeaderMap::new();
                if let Some(seq) = seq {
                    headers.insert("Pw-Seq", *seq);
                }
                raw.publish_with_headers(
                    reply.clone(),
                    headers,
                    Bytes::from_static(payload.as_bytes()),
                )
                .await
                .unwrap();
            }
            raw.flush().await.unwrap();
        }
    })
}

async fn plane_client(nats: &NatsServer) -> NatsRequestClient {
    let connection = async_nats::connect(nats.url()).await.unwrap();
    NatsRequestClient::new(connection, NatsRequestConfig::default())
        .await
        .unwrap()
}

/// A request to a [`fake_server`] on `subject` answering `replies`: the items the client
/// yields before its error, and that error, after which the stream has ended.
async fn items_then_error(
    nats: &NatsServer,
    endpoint: &str,
    replies: Vec<(Option<&'static str>, &'static str)>,
) -> (Vec<Bytes>, RequestError) {
    let client = plane_client(nats).await;
    let address = subject(&path(endpoint));
    let fake = fake_server(nats, address.clone(), replies).await;
    let request = Request::new(&path(endpoint), Bytes::new());
    let mut responses = client.request(&address, request).await.unwrap();
    let mut items = Vec::new();
    let err = loop {
        match within("the next response", responses.next()).await {
            Some(Ok(item)) => items.push(item),
            Some(Err(err)) => break err,
            None => panic!("the stream ended without an error after {items:?}"),
        }
    };
    assert!(!err.is_timeout(), "{err}");
    assert!(within("the end", responses.next()).await.is_none());
    fake.abort();
    (items, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_response_is_an_error_on_the_stream_not_a_hang() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let replies = vec![(Some("0"), "first"), (Some("2"), "third")];
    let (items, err) = items_then_error(&nats, "gap", replies).await;
    assert_eq!(items, ["first"]);
    let address = subject(&path("gap"));
    let lost = format!("response #1 from {address} was lost (the next one received was #2)");
    assert!(err.to_string().contains(&lost), "{err}");
}

/// A `Pw-Seq` repeated, or lower than the next one expected (a server or a relay that
/// sends a message twice), is an error after the responses in order, and is named as
/// such: calling it a lost response would send whoever debugs it after a missing message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_or_older_sequence_number_is_an_error_naming_it_not_a_loss() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let repeated = vec![(Some("0"), "first"), (Some("0"), "first again")];
    let older = vec![
        (Some("0"), "first"),
        (Some("1"), "second"),
        (Some("0"), "old"),
    ];
    for (endpoint, replies, expected) in [("repeated", repeated, 1), ("older", older, 2)] {
        let (items, err) = items_then_error(&nats, endpoint, replies).await;
        assert_eq!(items.len(), expected, "{items:?}");
        let address = subject(&path(endpoint));
        let named = format!(
            "response #0 from {address} arrived again or out of order (expected #{expected})"
        );
        let message = err.to_string();
        assert!(message.contains(&named), "{message}");
        assert!(!message.contains("was lost"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_without_a_sequence_number_is_an_error() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let (items, err) = items_then_error(&nats, "bare", vec![(None, "who am I")]).await;
    assert!(items.is_empty(), "{items:?}");
    let address = subject(&path("bare"));
    let missing = format!("a reply from {address} had no valid Pw-Seq header");
    assert!(err.to_string().contains(&missing), "{err}");
}
