//! The network side: accepts TCP (optionally TLS) connections, serves HTTP/1.1
//! with the WebSocket upgrade at `/ws`, and shuts down gracefully. The caller binds
//! the listener and passes it in, so tests can use `127.0.0.1:0`.

mod connection;
mod http;
mod refusal;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::service::Service;

pub use refusal::REFUSING_AT_ONCE;

/// Everything a connection handler needs, shared by all of them.
pub(crate) struct Shared {
    pub service: Arc<Service>,
    pub config: Config,
    pub auth: http::TokenCheck,
    /// Every connection task, HTTP and upgraded WebSocket alike, so shutdown can
    /// wait for them.
    pub tasks: TaskTracker,
}

/// A connection slot; held by the HTTP task and, after an upgrade, by the
/// WebSocket task, so upgraded connections count against the limit too.
pub(crate) type Slot = Arc<OwnedSemaphorePermit>;

/// How long in-flight connections get to finish after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves, then closes every connection and returns.
pub async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: Config,
    service: Arc<Service>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let auth = http::TokenCheck::new(config.token.as_ref());
    let max_connections = config.limits.max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    let refusals = refusal::Refusals::new(max_connections);
    let tasks = TaskTracker::new();
    let shared = Arc::new(Shared { service, config, auth, tasks: tasks.clone() });
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);

    loop {
        // Accept even at the cap: a connection left in the backlog would wait
        // for a free slot with no word, while a refused one learns at once.
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener) => accepted,
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            refusals.refuse(stream, tls.clone(), &tasks);
            continue;
        };
        let (shared, tls, stop) = (Arc::clone(&shared), tls.clone(), stop_rx.clone());
        tasks.spawn(serve_connection(stream, tls, shared, stop, Arc::new(permit)));
    }

    tracing::info!(open = tasks.len(), "shutting down");
    let _ = stop_tx.send(true);
    tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait()).await.is_err() {
        tracing::warn!(open = tasks.len(), "connections still open after {DRAIN_TIMEOUT:?}; leaving them");
    }
}

/// Accepts the next connection, backing off on errors (such as running out of
/// file descriptors) instead of spinning.
async fn accept(listener: &TcpListener) -> TcpStream {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                configure_socket(&stream);
                return stream;
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The protocol forbids server pings (the socktop client breaks on any frame it
/// did not ask for), so dead peers are found by TCP keepalive.
fn configure_socket(stream: &TcpStream) {
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive).and_then(|()| socket.set_tcp_nodelay(true)) {
        tracing::debug!(error = %e, "setting socket options failed");
    }
}

async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    slot: Slot,
) {
    let peer = stream.peer_addr().ok();
    let Some(tls) = tls else {
        http::serve(stream, shared, stop, slot).await;
        return;
    };
    match tokio::time::timeout(shared.config.limits.handshake_timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => http::serve(stream, shared, stop, slot).await,
        Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
    }
}

/// The token check on its own, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn token_allows(token: &str, query: &str) -> bool {
    http::TokenCheck::new(crate::config::Token::new(token).as_ref()).allows(Some(query))
}

/// Resolves once shutdown is asked for. (The guard `wait_for` returns is not
/// `Send`, so it is dropped here rather than held in a `select!`.)
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
