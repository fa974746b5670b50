//! A TCP proxy on 127.0.0.1 whose open connections a test can cut, to drop one client's
//! link to a server while every other client stays connected.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    address: SocketAddr,
    /// Fired by `cut`; replaced by a fresh one for the connections that come after.
    current: Arc<Mutex<CancellationToken>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Forwards every connection made to [`address`](Self::address) to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let current = Arc::new(Mutex::new(CancellationToken::new()));
        let tokens = Arc::clone(&current);
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
        Self {
            address,
            current,
            accept,
        }
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
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.current.lock().unwrap().cancel();
    }
}
