//! Connections past the cap: answered `503 Service Unavailable` at once, before
//! any upgrade, rather than left waiting in the listen backlog for a slot. A flood
//! past the cap costs little: at most [`REFUSING_AT_ONCE`] refusals run at a time,
//! each for at most [`REFUSAL_TIMEOUT`]; beyond that, connections are closed
//! without a word.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

/// Refusals in progress at most; each holds a socket, so the binary counts them
/// in its open-files budget.
pub const REFUSING_AT_ONCE: usize = 64;

/// Time a refusal may take, TLS handshake included.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain\r\n\
Content-Length: 36\r\n\
Retry-After: 5\r\n\
Connection: close\r\n\
\r\n\
too many connections; retry shortly\n";

pub(super) struct Refusals {
    max_connections: usize,
    at_once: Arc<Semaphore>,
    /// The first refusal is a warning; the rest would flood the log during a
    /// flood of connections, so they are debug lines.
    warned: AtomicBool,
}

impl Refusals {
    pub fn new(max_connections: usize) -> Self {
        Self { max_connections, at_once: Arc::new(Semaphore::new(REFUSING_AT_ONCE)), warned: AtomicBool::new(false) }
    }

    /// Answers `stream` with a 503 on a task of its own, or closes it at once
    /// when too many refusals are already under way.
    pub fn refuse(&self, stream: TcpStream, tls: Option<TlsAcceptor>, tasks: &TaskTracker) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "at the limit of {} connections: new ones are refused with 503 (further refusals are logged at debug level)",
                self.max_connections
            );
        } else {
            tracing::debug!("at the connection limit: refusing a connection");
        }
        let Ok(permit) = Arc::clone(&self.at_once).try_acquire_owned() else { return };
        tasks.spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse(stream, tls)).await;
        });
    }
}

async fn refuse(stream: TcpStream, tls: Option<TlsAcceptor>) {
    match tls {
        None => answer_503(stream).await,
        Some(tls) => {
            if let Ok(stream) = tls.accept(stream).await {
                answer_503(stream).await;
            }
        }
    }
}

/// Sends the 503 without reading the request, then reads until the client
/// closes: closing with its request unread would reset the connection, and the
/// reset can reach the client before it has read the answer.
async fn answer_503<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    if io.write_all(REFUSAL).await.is_err() || io.shutdown().await.is_err() {
        return;
    }
    let mut discard = [0; 1024];
    while let Ok(1..) = io.read(&mut discard).await {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_http_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        let length: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        assert_eq!(length, body.len());
    }
}
