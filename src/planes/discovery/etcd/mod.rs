//! The etcd backend (cargo feature `etcd`): real leases, prefix watches that resume from
//! the last revision seen after etcd restarts, auth and TLS from `ETCD_*`.

mod watch;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use futures::FutureExt;
use futures::future::BoxFuture;

use super::DiscoveryError;
use super::config::{
    ENV_ETCD_CA, ENV_ETCD_CLIENT_CERT, ENV_ETCD_CLIENT_KEY, ENV_ETCD_ENDPOINTS, EtcdConfig,
};
use super::kv::{KeyValue, KvStore, KvWatch, LeaseId};
use crate::config::ConfigError;

/// gRPC status codes etcd answers with (from the gRPC spec).
mod code {
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// A [`KvStore`] on an etcd cluster. Cheap to share: the client multiplexes one
/// HTTP/2 connection per endpoint and reconnects by itself.
pub struct EtcdStore {
    client: Client,
    info: Connection,
}

impl EtcdStore {
    /// Connects and checks that etcd answers (and accepts the credentials) within
    /// `config.connect_timeout`.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, DiscoveryError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            // Notices a dead connection even while only a watch is open.
            .with_keep_alive(Duration::from_secs(10), config.request_timeout)
            .with_auto_token_refresh(true);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            options = options.with_user(user, password);
        }
        if let Some(tls) = tls_options(config)? {
            options = options.with_tls(tls);
        }
        let info = Connection {
            target: config.endpoints.join(","),
            user: config.username.clone(),
            request_timeout: config.request_timeout,
        };
        let connect = async {
            let mut client = Client::connect(&config.endpoints, Some(options)).await?;
            if config.username.is_none() {
                // Without auth, connecting is lazy: make sure somebody answers.
                client.status().await?;
            }
            Ok::<_, etcd_client::Error>(client)
        };
        match tokio::time::timeout(config.connect_timeout, connect).await {
            Ok(Ok(client)) => Ok(Self { client, info }),
            Ok(Err(err)) => Err(info.error(err)),
            Err(_) => Err(info.timeout(config.connect_timeout)),
        }
    }

    /// Runs one etcd call, bounded by the request timeout, with errors translated.
    async fn call<T>(
        &self,
        operation: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, DiscoveryError> {
        let timeout = self.info.request_timeout;
        match tokio::time::timeout(timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(self.info.error(err)),
            Err(_) => Err(self.info.timeout(timeout)),
        }
    }

    /// Like [`call`](Self::call) for an operation on `lease`, whose absence is reported
    /// as [`DiscoveryError::LeaseExpired`].
    async fn call_on_lease<T>(
        &self,
        lease: Option<LeaseId>,
        operation: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, DiscoveryError> {
        let timeout = self.info.request_timeout;
        match (lease, tokio::time::timeout(timeout, operation).await) {
            (Some(lease), Ok(Err(err))) if is_lease_not_found(&err) => {
                Err(DiscoveryError::LeaseExpired { lease })
            }
            (_, Ok(result)) => result.map_err(|err| self.info.error(err)),
            (_, Err(_)) => Err(self.info.timeout(timeout)),
        }
    }
}

/// What the store is connected to, for error messages.
#[derive(Clone)]
struct Connection {
    /// The endpoints, comma-separated.
    target: String,
    user: Option<String>,
    request_timeout: Duration,
}

impl Connection {
    fn timeout(&self, timeout: Duration) -> DiscoveryError {
        DiscoveryError::Timeout {
            backend: "etcd",
            target: self.target.clone(),
            setting: ENV_ETCD_ENDPOINTS,
            timeout,
        }
    }

    fn error(&self, err: etcd_client::Error) -> DiscoveryError {
        let unavailable = |err: etcd_client::Error| DiscoveryError::Unavailable {
            backend: "etcd",
            target: self.target.clone(),
            setting: ENV_ETCD_ENDPOINTS,
            source: Box::new(err),
        };
        match &err {
            etcd_client::Error::GRpcStatus(status) => {
                let code = i32::from(status.code());
                let message = status.message();
                if code == code::UNAUTHENTICATED
                    || code == code::PERMISSION_DENIED
                    || message.contains("authentication")
                    || (code == code::FAILED_PRECONDITION && message.contains("auth"))
                {
                    DiscoveryError::Auth {
                        user: self.user.clone().unwrap_or_default(),
                        target: self.target.clone(),
                        source: Box::new(err),
                    }
                } else if code == code::DEADLINE_EXCEEDED {
                    self.timeout(self.request_timeout)
                } else if code == code::UNAVAILABLE || is_local(status) {
                    unavailable(err)
                } else {
                    backend_error(err)
                }
            }
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                unavailable(err)
            }
            _ => backend_error(err),
        }
    }
}

/// A status tonic made itself from a transport failure, not one etcd sent: it carries
/// the transport error as its source (a status from the wire has none). Its code varies
/// with how the connection failed — Unknown when it broke mid-request, Cancelled when
/// the channel was still reconnecting ("connection was not ready") — and in every case
/// etcd was not reached.
fn is_local(status: &impl std::error::Error) -> bool {
    std::error::Error::source(status).is_some()
}

fn backend_error(err: etcd_client::Error) -> DiscoveryError {
    DiscoveryError::Backend {
        backend: "etcd",
        operation: "request",
        source: Box::new(err),
    }
}

/// etcd says "requested lease not found"; etcd-client turns a keep-alive answer with
/// TTL 0 (lease unknown) into `LeaseKeepAliveError("lease not found")`.
fn is_lease_not_found(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(s) => {
            i32::from(s.code()) == code::NOT_FOUND && s.message().contains("lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("not found"),
        _ => false,
    }
}

fn tls_options(config: &EtcdConfig) -> Result<Option<TlsOptions>, DiscoveryError> {
    if config.ca.is_none() && config.client_cert.is_none() {
        return Ok(None);
    }
    if let Some(plain) = config.endpoints.iter().find(|e| e.starts_with("http://")) {
        return Err(ConfigError::invalid(
            ENV_ETCD_ENDPOINTS,
            plain,
            format!(
                "https:// URLs, since TLS is configured ({ENV_ETCD_CA} or ETCD_AUTH_CLIENT_CERT)"
            ),
        )
        .into());
    }
    let read = |path: &std::path::Path, setting: &'static str| {
        std::fs::read(path).map_err(|source| DiscoveryError::Io {
            action: "read etcd TLS file",
            path: path.to_owned(),
            setting,
            source,
        })
    };
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca, ENV_ETCD_CA)?));
    }
    if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
        let cert = read(cert, ENV_ETCD_CLIENT_CERT)?;
        tls = tls.identity(Identity::from_pem(cert, read(key, ENV_ETCD_CLIENT_KEY)?));
    }
    Ok(Some(tls))
}

/// etcd leases have whole-second TTLs: round up, at least 1 s (etcd may raise it to
/// its own minimum, about 2 s with default election settings).
fn ttl_seconds(ttl: Duration) -> i64 {
    (ttl.as_millis().div_ceil(1000) as i64).max(1)
}

fn key_values(kvs: &[etcd_client::KeyValue]) -> Vec<KeyValue> {
    kvs.iter()
        .filter_map(|kv| match kv.key_str() {
            Ok(key) => Some(KeyValue {
                key: key.to_owned(),
                value: Bytes::copy_from_slice(kv.value()),
            }),
            Err(_) => {
                tracing::warn!(key = ?kv.key(), "skipping an etcd key that is not UTF-8");
                None
            }
        })
        .collect()
}

impl KvStore for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, DiscoveryError>> {
        let mut client = self.client.clone();
        async move {
            let granted = self
                .call(client.lease_grant(ttl_seconds(ttl), None))
                .await?;
            Ok(LeaseId(granted.id()))
        }
        .boxed()
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        let mut client = self.client.clone();
        async move {
            let answer = self
                .call_on_lease(Some(lease), async {
                    let (mut keeper, mut answers) = client.lease_keep_alive(lease.0).await?;
                    keeper.keep_alive().await?;
                    answers.message().await
                })
                .await?;
            // etcd answers a keep-alive for an unknown lease with a TTL of 0.
            match answer {
                Some(answer) if answer.ttl() > 0 => Ok(()),
                _ => Err(DiscoveryError::LeaseExpired { lease }),
            }
        }
        .boxed()
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), DiscoveryError>> {
        let mut client = self.client.clone();
        async move {
            match self
                .call_on_lease(Some(lease), client.lease_revoke(lease.0))
                .await
            {
                Ok(_) | Err(DiscoveryError::LeaseExpired { .. }) => Ok(()),
                Err(err) => Err(err),
            }
        }
        .boxed()
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<(), DiscoveryError>> {
        let mut client = self.client.clone();
        async move {
            let options = lease.map(|l| PutOptions::new().with_lease(l.0));
            self.call_on_lease(lease, client.put(key, value.to_vec(), options))
                .await
                .map(drop)
        }
        .boxed()
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        let mut client = self.client.clone();
        async move {
            let options = lease.map(|l| PutOptions::new().with_lease(l.0));
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value.to_vec(), options)]);
            let answer = self.call_on_lease(lease, client.txn(txn)).await?;
            Ok(answer.succeeded())
        }
        .boxed()
    }

    fn claim<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        let mut client = self.client.clone();
        async move {
            let answer = self
                .call_on_lease(Some(lease), client.txn(claim_txn(key, &value, lease)))
                .await?;
            claim_outcome(key, &answer)
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, DiscoveryError>> {
        let mut client = self.client.clone();
        async move {
            let answer = self.call(client.get(key, None)).await?;
            Ok(answer
                .kvs()
                .first()
                .map(|kv| Bytes::copy_from_slice(kv.value())))
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, DiscoveryError>> {
        async move { Ok(self.snapshot(prefix).await?.0) }.boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        let mut client = self.client.clone();
        async move {
            let answer = self.call(client.delete(key, None)).await?;
            Ok(answer.deleted() > 0)
        }
        .boxed()
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, DiscoveryError>> {
        let mut client = self.client.clone();
        async move {
            let txn = Txn::new()
                .when([Compare::lease(key, CompareOp::Equal, lease.0)])
                .and_then([TxnOp::delete(key, None)]);
            Ok(self.call(client.txn(txn)).await?.succeeded())
        }
        .boxed()
    }

    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<KvWatch, DiscoveryError>> {
        async move {
            let (snapshot, revision) = self.snapshot(prefix).await?;
            Ok(watch::resumable(
                self.handle(),
                prefix.to_owned(),
                snapshot,
                revision,
            ))
        }
        .boxed()
    }
}

/// [`KvStore::claim`] as one transaction, so nothing can take the key between the checks
/// and the write: nothing to do if the key holds `value` on `lease`; else put if it is
/// absent (etcd deletes the keys of an expired lease itself); else put if it is on
/// `lease`; else read it, to name its holder. (A compare on a missing key sees lease 0
/// and no value.)
fn claim_txn(key: &str, value: &[u8], lease: LeaseId) -> Txn {
    let put = || TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease.0)));
    let on_our_lease = Txn::new()
        .when([Compare::lease(key, CompareOp::Equal, lease.0)])
        .and_then([put()])
        .or_else([TxnOp::get(key, None)]);
    let absent = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([put()])
        .or_else([TxnOp::txn(on_our_lease)]);
    Txn::new()
        .when([
            Compare::lease(key, CompareOp::Equal, lease.0),
            Compare::value(key, CompareOp::Equal, value),
        ])
        .or_else([TxnOp::txn(absent)])
}

/// Whether [`claim_txn`] wrote, or who holds the key.
fn claim_outcome(key: &str, answer: &etcd_client::TxnResponse) -> Result<bool, DiscoveryError> {
    if answer.succeeded() {
        return Ok(false);
    }
    let mut responses = answer.op_responses();
    loop {
        match responses.into_iter().next() {
            Some(TxnOpResponse::Txn(inner)) if inner.succeeded() => return Ok(true),
            Some(TxnOpResponse::Txn(inner)) => responses = inner.op_responses(),
            Some(TxnOpResponse::Get(get)) => {
                let holder = get.kvs().first().map_or(0, |kv| kv.lease());
                return Err(DiscoveryError::KeyHeld {
                    key: key.to_owned(),
                    holder: (holder != 0).then_some(LeaseId(holder)),
                });
            }
            _ => return Err(unexpected_claim_answer()),
        }
    }
}

fn unexpected_claim_answer() -> DiscoveryError {
    DiscoveryError::Backend {
        backend: "etcd",
        operation: "claim",
        source: "the transaction's answer does not have the shape it was sent".into(),
    }
}

impl EtcdStore {
    /// Everything under `prefix` (sorted by key, as etcd returns it) and the store
    /// revision it was read at.
    async fn snapshot(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), DiscoveryError> {
        let mut client = self.client.clone();
        let answer = self
            .call(client.get(prefix, Some(GetOptions::new().with_prefix())))
            .await?;
        let revision = answer.header().map_or(0, |h| h.revision());
        Ok((key_values(answer.kvs()), revision))
    }

    /// A copy for a watch to own: the client is a cheap handle on shared connections.
    fn handle(&self) -> Self {
        Self {
            client: self.client.clone(),
            info: self.info.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    fn connection() -> Connection {
        Connection {
            target: "http://127.0.0.1:2379".to_owned(),
            user: None,
            request_timeout: Duration::from_secs(3),
        }
    }

    /// What tonic builds when the transport fails: a status with the failure as its source.
    fn local(code: Code) -> etcd_client::Error {
        #[derive(Debug, thiserror::Error)]
        #[error("transport failed")]
        struct Transport(#[source] Status);
        etcd_client::Error::GRpcStatus(Status::from_error(Box::new(Transport(Status::new(
            code,
            "connection was not ready",
        )))))
    }

    fn wire(code: Code) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(Status::new(code, "sent by etcd"))
    }

    #[test]
    fn a_status_tonic_made_from_a_transport_failure_is_unavailable_whatever_its_code() {
        for code in [Code::Cancelled, Code::Unknown, Code::Internal] {
            let err = connection().error(local(code));
            assert!(
                matches!(err, DiscoveryError::Unavailable { .. }),
                "{code:?}: {err:?}"
            );
            assert!(err.is_unavailable());
        }
    }

    #[test]
    fn statuses_etcd_sent_keep_their_meaning() {
        let c = connection();
        assert!(matches!(
            c.error(wire(Code::Unavailable)),
            DiscoveryError::Unavailable { .. }
        ));
        assert!(matches!(
            c.error(wire(Code::DeadlineExceeded)),
            DiscoveryError::Timeout { .. }
        ));
        assert!(matches!(
            c.error(wire(Code::Unauthenticated)),
            DiscoveryError::Auth { .. }
        ));
        // A cancel etcd itself reports is its answer, not an outage: the caller sees it.
        let cancelled = c.error(wire(Code::Cancelled));
        assert!(
            matches!(cancelled, DiscoveryError::Backend { .. }),
            "{cancelled:?}"
        );
        assert!(!cancelled.is_unavailable());
    }
}
