//! A TCP proxy between a cache and Redis that injects connection faults one connection at
//! a time: it stalls every connection, or only the subscriber connections (those that
//! sent `SUBSCRIBE` or `PSUBSCRIBE`: the L1's invalidation channel), and it drops
//! connections (closes both sides at once, as a network failure or a server-side kill
//! would).
//!
//! A stalled connection stays open: what the client sends is read and held, nothing is
//! forwarded in either direction until the stall is lifted (then the held bytes go
//! through first), which is what a black-holed path or a silent NAT timeout looks like.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One proxied connection.
struct Conn {
    id: u64,
    /// Whether bytes are held (recomputed from the proxy's rules by [`Shared::refresh`]).
    stalled: watch::Sender<bool>,
    /// Set once: both directions end and both sockets close.
    killed: watch::Sender<bool>,
    /// The client sent a (P)SUBSCRIBE on this connection.
    subscriber: AtomicBool,
    /// Held because it is a subscriber connection and subscribers are held.
    subscriber_held: AtomicBool,
}

#[derive(Default)]
struct Shared {
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Every connection is stalled.
    all_stalled: AtomicBool,
    /// Subscriber connections identified from now on are stalled.
    hold_subscribers: AtomicBool,
    next_id: AtomicU64,
    accepted: AtomicUsize,
    dropped: AtomicUsize,
}

impl Shared {
    fn conns(&self) -> Vec<Arc<Conn>> {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn refresh(&self, conn: &Conn) {
        let stalled =
            self.all_stalled.load(Ordering::SeqCst) || conn.subscriber_held.load(Ordering::SeqCst);
        conn.stalled.send_replace(stalled);
    }

    fn refresh_all(&self) {
        for conn in self.conns() {
            self.refresh(&conn);
        }
    }
}

/// See the module documentation.
pub struct TapProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl TapProxy {
    /// Listens on `bind` (e.g. `127.0.0.1:0`) and forwards to `upstream`. Needs a runtime.
    pub async fn start(bind: &str, upstream: SocketAddr) -> TapProxy {
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("tap proxy cannot bind {bind}: {e}"));
        let addr = listener.local_addr().expect("tap proxy local_addr");
        let shared = Arc::new(Shared::default());
        let for_accept = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            // Dropped with the accept task: aborting it ends every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                for_accept.accepted.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(&for_accept);
                connections.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let conn = Arc::new(Conn {
                        id: shared.next_id.fetch_add(1, Ordering::SeqCst),
                        stalled: watch::channel(false).0,
                        killed: watch::channel(false).0,
                        subscriber: AtomicBool::new(false),
                        subscriber_held: AtomicBool::new(false),
                    });
                    shared.refresh(&conn);
                    shared
                        .conns
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Arc::clone(&conn));
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let up = pump(ri, wo, &conn, &shared, true);
                    let down = pump(ro, wi, &conn, &shared, false);
                    let _ = tokio::join!(up, down);
                    shared
                        .conns
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .retain(|c| c.id != conn.id);
                });
                while connections.try_join_next().is_some() {}
            }
        });
        TapProxy {
            addr,
            shared,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed by [`Self::drop_all`] so far.
    pub fn dropped(&self) -> usize {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// Open connections that sent a (P)SUBSCRIBE.
    pub fn subscribers(&self) -> usize {
        self.shared
            .conns()
            .iter()
            .filter(|c| c.subscriber.load(Ordering::SeqCst))
            .count()
    }

    /// Stalls every connection, open or opened later.
    pub fn stall_all(&self) {
        self.shared.all_stalled.store(true, Ordering::SeqCst);
        self.shared.refresh_all();
    }

    /// Lifts [`Self::stall_all`] (subscribers held by their own rule stay held).
    pub fn forward_all(&self) {
        self.shared.all_stalled.store(false, Ordering::SeqCst);
        self.shared.refresh_all();
    }

    /// Stalls the subscriber connections: the open ones, and any identified later (a
    /// re-subscription is held too). Other connections go on.
    pub fn stall_subscribers(&self) {
        self.shared.hold_subscribers.store(true, Ordering::SeqCst);
        for conn in self.shared.conns() {
            if conn.subscriber.load(Ordering::SeqCst) {
                conn.subscriber_held.store(true, Ordering::SeqCst);
                self.shared.refresh(&conn);
            }
        }
    }

    /// Stalls the subscriber connections identified from now on, leaving the open ones
    /// alone: after the server kills a subscription, its re-subscription hangs.
    pub fn hold_new_subscribers(&self) {
        self.shared.hold_subscribers.store(true, Ordering::SeqCst);
    }

    /// Lifts [`Self::stall_subscribers`] and [`Self::hold_new_subscribers`].
    pub fn release_subscribers(&self) {
        self.shared.hold_subscribers.store(false, Ordering::SeqCst);
        for conn in self.shared.conns() {
            conn.subscriber_held.store(false, Ordering::SeqCst);
            self.shared.refresh(&conn);
        }
    }

    /// Closes every open connection, both sides, at once; how many.
    pub fn drop_all(&self) -> usize {
        let conns = self.shared.conns();
        for conn in &conns {
            conn.killed.send_replace(true);
        }
        self.shared.dropped.fetch_add(conns.len(), Ordering::SeqCst);
        conns.len()
    }
}

impl Drop for TapProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Whether `bytes` hold a RESP `SUBSCRIBE` or `PSUBSCRIBE` command name.
fn subscribes(bytes: &[u8]) -> bool {
    const NAME: &[u8] = b"SUBSCRIBE\r\n";
    bytes
        .windows(NAME.len())
        .any(|w| w.eq_ignore_ascii_case(NAME))
}

/// Copies `from` to `to` until either side ends or the connection is killed, holding
/// bytes while the connection is stalled. `upstream`: the client-to-server direction
/// (where subscriptions are recognised).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    conn: &Conn,
    shared: &Shared,
    upstream: bool,
) {
    let mut stalled = conn.stalled.subscribe();
    let mut killed = conn.killed.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            () = until_killed(&mut killed) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if upstream && !conn.subscriber.load(Ordering::SeqCst) && subscribes(&buf[..n]) {
            conn.subscriber.store(true, Ordering::SeqCst);
            if shared.hold_subscribers.load(Ordering::SeqCst) {
                conn.subscriber_held.store(true, Ordering::SeqCst);
                shared.refresh(conn);
            }
        }
        tokio::select! {
            lifted = until_forwarding(&mut stalled) => if !lifted { return },
            () = until_killed(&mut killed) => return,
        }
        tokio::select! {
            written = to.write_all(&buf[..n]) => if written.is_err() { return },
            () = until_killed(&mut killed) => return,
        }
    }
}

/// Returns once the connection is killed (or its sender is gone).
async fn until_killed(killed: &mut watch::Receiver<bool>) {
    let _ = killed.wait_for(|k| *k).await;
}

/// Returns once the connection is not stalled; `false` if its sender is gone.
async fn until_forwarding(stalled: &mut watch::Receiver<bool>) -> bool {
    stalled.wait_for(|s| !*s).await.is_ok()
}
