//! [`TcpProxy`]: a TCP relay between a client and a server that can stop forwarding on the
//! connections it holds without closing them (a frozen proxy, a half-open network), or cut
//! them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A TCP relay on `127.0.0.1:0`; see the module documentation. Dropping it stops it.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    next_id: Arc<AtomicU64>,
    frozen_below: Arc<AtomicU64>,
    cut_below: watch::Sender<u64>,
    upstream: Arc<std::sync::Mutex<SocketAddr>>,
    to_clients: Arc<AtomicU64>,
    _tasks: JoinSet<()>,
}

impl TcpProxy {
    /// Starts relaying every connection to `upstream`.
    ///
    /// # Errors
    /// If no port can be bound.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let next_id = Arc::new(AtomicU64::new(0));
        let frozen_below = Arc::new(AtomicU64::new(0));
        let (cut_below, cut) = watch::channel(0);
        let upstream = Arc::new(std::sync::Mutex::new(upstream));
        let to_clients = Arc::new(AtomicU64::new(0));
        let counted = to_clients.clone();
        let mut tasks = JoinSet::new();
        let (ids, frozen, target) = (next_id.clone(), frozen_below.clone(), upstream.clone());
        tasks.spawn(async move {
            let mut relays = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let id = ids.fetch_add(1, Ordering::SeqCst);
                let to = *target.lock().unwrap_or_else(|p| p.into_inner());
                let Ok(server) = TcpStream::connect(to).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let cut_client = cut_when(cut.clone(), id);
                let cut_server = cut_when(cut.clone(), id);
                let upstream = relay(client_read, server_write, id, frozen.clone(), None);
                let downstream = relay(
                    server_read,
                    client_write,
                    id,
                    frozen.clone(),
                    Some(counted.clone()),
                );
                relays.spawn(async move {
                    tokio::select! {
                        () = upstream => {}
                        () = cut_client => {}
                    }
                });
                relays.spawn(async move {
                    tokio::select! {
                        () = downstream => {}
                        () = cut_server => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            next_id,
            frozen_below,
            cut_below,
            upstream,
            to_clients,
            _tasks: tasks,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding on every connection open now, keeping them open; later connections
    /// are relayed normally.
    pub fn freeze_existing(&self) {
        self.frozen_below
            .store(self.next_id.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Closes every connection open now (both sides see the TCP connection drop); later
    /// connections are relayed normally.
    pub fn cut_existing(&self) {
        self.cut_below
            .send_replace(self.next_id.load(Ordering::SeqCst));
    }

    /// Relays later connections to `upstream` instead (a load balancer sending a client to
    /// another hub); connections open now are left as they are.
    pub fn redirect(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream;
    }

    /// How many bytes the proxy has relayed from the server to its clients (all
    /// connections, upgrade answers included).
    pub fn bytes_to_clients(&self) -> u64 {
        self.to_clients.load(Ordering::SeqCst)
    }

    /// How many connections the proxy has accepted.
    pub fn connections(&self) -> u64 {
        self.next_id.load(Ordering::SeqCst)
    }
}

/// Resolves once connection `id` is to be cut.
async fn cut_when(mut cut_below: watch::Receiver<u64>, id: u64) {
    let _ = cut_below.wait_for(|below| id < *below).await;
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    frozen_below: Arc<AtomicU64>,
    counted: Option<Arc<AtomicU64>>,
) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if id < frozen_below.load(Ordering::SeqCst) {
            // Frozen: hold both sockets open and forward nothing, ever.
            std::future::pending::<()>().await;
        }
        if let Some(counted) = &counted {
            counted.fetch_add(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&chunk[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
