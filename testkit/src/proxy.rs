//! A TCP proxy on 127.0.0.1 whose open connections a test can cut, to drop one client's
//! link to a server while every other client stays connected, and whose port a test
//! can close for a while (connections refused) and open again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    address: SocketAddr,
    target: SocketAddr,
    /// Fired by `cut`; replaced by a fresh one for the connections that come after.
    current: Arc<Mutex<CancellationToken>>,
    /// The accept loop, which owns the listener; `None` while the port is closed.
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Proxy {
    /// Forwards every connection made to [`address`](Self::address) to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            address: listener.local_addr().unwrap(),
            target,
            current: Arc::new(Mutex::new(CancellationToken::new())),
            accept: Mutex::new(None),
        };
        proxy.accept_on(listener);
        proxy
    }

    fn accept_on(&self, listener: TcpListener) {
        let tokens = Arc::clone(&self.current);
        let target = self.target;
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let cut = tokens.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    // Dropping both sockets on a cut closes them: each peer sees its
                    // connection end.
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        *self.accept.lock().unwrap() = Some(accept);
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every connection open now; later ones are forwarded as before.
    pub fn cut(&self) {
        let mut current = self.current.lock().unwrap();
        current.cancel();
        *current = CancellationToken::new();
    }

    /// Cuts every connection and closes the port: connecting is refused until
    /// [`open`](Self::open).
    pub fn close(&self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            // Aborting the task drops the listener it owns.
            accept.abort();
        }
        self.cut();
    }

    /// Listens on the same port again (after [`close`](Self::close)).
    pub async fn open(&self) {
        // The aborted task may not have dropped its listener yet: retry until the port
        // is free (the listener sets SO_REUSEADDR, so no TIME_WAIT gets in the way).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                Err(err) if std::time::Instant::now() > deadline => {
                    panic!("cannot listen on {} again: {err}", self.address)
                }
                Err(_) => tokio::task::yield_now().await,
            }
        };
        self.accept_on(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        self.current.lock().unwrap().cancel();
    }
}
