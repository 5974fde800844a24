//! HTTP/1.1 routing: `GET /healthz`, and `GET /ws` with the token check and the
//! WebSocket upgrade.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_tungstenite::tungstenite::protocol::WebSocketConfig;
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::connection;
use super::{Shared, Slot};
use crate::config::Token;

/// Each WebSocket's read buffer. Requests are a few dozen bytes; tungstenite's
/// default (128 KiB) is allocated per connection and zeroed before every read,
/// which cost more CPU than collecting a metrics answer, and 64 MiB of memory at
/// 500 clients.
const READ_BUFFER_BYTES: usize = 4096;

/// Serves HTTP on one connection until it closes or shutdown is asked for.
pub(super) async fn serve<IO>(io: IO, shared: Arc<Shared>, mut stop: watch::Receiver<bool>, slot: Slot)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let (shared, stop) = (Arc::clone(&shared), stop.clone());
        hyper::service::service_fn(move |request| route(request, Arc::clone(&shared), stop.clone(), Arc::clone(&slot)))
    };
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.limits.handshake_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(http);
    tokio::select! {
        result = &mut http => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        _ = super::stopped(&mut stop) => {
            http.as_mut().graceful_shutdown();
            let _ = http.await;
        }
    }
}

async fn route(
    mut request: Request<Incoming>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    slot: Slot,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => plain(StatusCode::OK, ""),
        (&Method::GET, "/ws") => {
            if !shared.auth.allows(request.uri().query()) {
                plain(StatusCode::UNAUTHORIZED, "invalid or missing token\n")
            } else if !hyper_tungstenite::is_upgrade_request(&request) {
                plain(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n")
            } else {
                upgrade(&mut request, shared, stop, slot)
            }
        }
        (_, "/ws" | "/healthz") => plain(StatusCode::METHOD_NOT_ALLOWED, ""),
        _ => plain(StatusCode::NOT_FOUND, ""),
    };
    Ok(response)
}

fn upgrade(
    request: &mut Request<Incoming>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    slot: Slot,
) -> Response<Full<Bytes>> {
    let limits = shared.config.limits;
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes))
        .read_buffer_size(READ_BUFFER_BYTES);
    match hyper_tungstenite::upgrade(request, Some(ws_config)) {
        Ok((response, websocket)) => {
            shared.tasks.clone().spawn(async move {
                match websocket.await {
                    Ok(websocket) => connection::run(websocket, shared, stop).await,
                    Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
                }
                drop(slot);
            });
            response
        }
        Err(e) => plain(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    }
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

/// The `?token=` check. Only the SHA-256 digest of the configured token is kept,
/// and a given token is hashed and its digest compared with it in constant time:
/// both are 32 bytes whatever the tokens, so the time a rejection takes tells
/// neither how much of the token was right nor how long it is. Neither token is
/// ever logged.
pub(crate) struct TokenCheck {
    expected: Option<TokenDigest>,
    warned: AtomicBool,
}

type TokenDigest = [u8; 32];

fn digest(token: &[u8]) -> TokenDigest {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token).as_ref());
    out
}

impl TokenCheck {
    pub fn new(token: Option<&Token>) -> Self {
        Self { expected: token.map(|t| digest(t.expose().as_bytes())), warned: AtomicBool::new(false) }
    }

    pub fn allows(&self, query: Option<&str>) -> bool {
        let Some(expected) = &self.expected else { return true };
        let given = query.and_then(token_from_query).unwrap_or_default();
        let ok: bool = digest(given.as_bytes()).ct_eq(expected).into();
        if !ok && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "rejected a connection with a wrong or missing token (further rejections are logged at debug level)"
            );
        } else if !ok {
            tracing::debug!("rejected a connection with a wrong or missing token");
        }
        ok
    }
}

/// The decoded value of `token` in a query string (`+` and `%XX` as forms
/// encode them).
fn token_from_query(query: &str) -> Option<Cow<'_, str>> {
    form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == "token").map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_configured_token_allows_everyone() {
        let check = TokenCheck::new(None);
        assert!(check.allows(None));
        assert!(check.allows(Some("token=anything")));
        assert!(TokenCheck::new(Token::new("").as_ref()).allows(None));
    }

    #[test]
    fn a_configured_token_must_match_exactly() {
        let check = TokenCheck::new(Token::new("s3cret value").as_ref());
        assert!(check.allows(Some("token=s3cret%20value")));
        assert!(check.allows(Some("x=1&token=s3cret+value")));
        assert!(!check.allows(Some("token=s3cret")));
        assert!(!check.allows(Some("token=s3cret%20value2")));
        assert!(!check.allows(Some("tok=s3cret%20value")));
        assert!(!check.allows(None));
    }

    #[test]
    fn the_token_is_decoded_as_a_form_value_keeping_bad_escapes_as_they_are() {
        assert_eq!(token_from_query("x=1&token=a%2Fb%zz%&token=second").as_deref(), Some("a/b%zz%"));
        assert_eq!(token_from_query("tokens=x"), None);
    }
}
