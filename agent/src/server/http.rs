//! HTTP/1.1 routing: `GET /healthz` (the agent's description, JSON), `GET /ws` with
//! the token check and the WebSocket upgrade, and `GET /metrics` (Prometheus) with
//! the same token check.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_tungstenite::tungstenite::protocol::WebSocketConfig;
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::connection;
use super::{Shared, Slot};
use crate::config::Token;

/// Each WebSocket's read buffer. Requests are a few dozen bytes (eight pipelined
/// plain commands fit); a larger message grows the buffer to its length as it is
/// read. tungstenite's default (128 KiB) is allocated per connection and zeroed
/// before every read, which cost more CPU than collecting a metrics answer, and
/// 64 MiB of memory at 500 clients; at 4 KiB the zeroed buffer was still 4 KiB of
/// the 7.5 KiB each idle connection kept resident (`cargo xtask bench --only
/// connections`).
const READ_BUFFER_BYTES: usize = 256;

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
        (&Method::GET, "/healthz") => json(&shared.service.agent_info()),
        (&Method::GET, "/ws") => {
            if !shared.auth.allows(request.uri().query()) {
                plain(StatusCode::UNAUTHORIZED, "invalid or missing token\n")
            } else if !hyper_tungstenite::is_upgrade_request(&request) {
                plain(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n")
            } else {
                upgrade(&mut request, shared, stop, slot)
            }
        }
        (&Method::GET, "/metrics") => metrics(&request, &shared).await,
        (_, "/ws" | "/healthz" | "/metrics") => plain(StatusCode::METHOD_NOT_ALLOWED, ""),
        _ => plain(StatusCode::NOT_FOUND, ""),
    };
    Ok(response)
}

/// The Prometheus scrape. The token may come as `?token=` or, as Prometheus's
/// `authorization` setting sends it, as `Authorization: Bearer TOKEN`.
async fn metrics(request: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let headers = request.headers();
    let bearer = headers.get(hyper::header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(bearer_token);
    let authorized = match bearer {
        Some(token) => shared.auth.allows_token(token),
        None => shared.auth.allows(request.uri().query()),
    };
    if !authorized {
        return plain(StatusCode::UNAUTHORIZED, "invalid or missing token\n");
    }
    let gzip = headers
        .get_all(hyper::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(accepts_gzip);
    let Some(body) = shared.service.prometheus(gzip).await else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "the scrape failed; see the agent's log\n");
    };
    let mut response = Response::new(Full::new(body));
    let response_headers = response.headers_mut();
    let content_type = HeaderValue::from_static(crate::protocol::prometheus::CONTENT_TYPE);
    response_headers.insert(hyper::header::CONTENT_TYPE, content_type);
    if gzip {
        response_headers.insert(hyper::header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// The token of an `Authorization: Bearer TOKEN` value; None for another scheme.
/// The scheme's name is case-insensitive (RFC 9110, 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then(|| token.trim())
}

/// Whether an `Accept-Encoding` value lists gzip without refusing it (`;q=0`).
fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let refused =
            parts.any(|p| p.replace(' ', "").strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()) == Some(0.0));
        name.eq_ignore_ascii_case("gzip") && !refused
    })
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
                // Bound by `let`, not matched around the await below: a value
                // matched on would stay in the task's state for as long as the
                // connection lasts (a second copy of the stream, 328 bytes).
                let websocket = match websocket.await {
                    Ok(websocket) => websocket,
                    Err(e) => {
                        tracing::debug!(error = %e, "WebSocket upgrade failed");
                        return;
                    }
                };
                connection::run(websocket, shared, stop).await;
                // Held until the connection ends: it counts against the limit.
                drop(slot);
            });
            response
        }
        Err(e) => plain(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    }
}

fn json(answer: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(answer) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            let json = hyper::header::HeaderValue::from_static("application/json");
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, json);
            response
        }
        Err(error) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n")),
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
        self.allows_token(&query.and_then(token_from_query).unwrap_or_default())
    }

    /// Whether `given` is the configured token (or none is configured).
    pub fn allows_token(&self, given: &str) -> bool {
        let Some(expected) = &self.expected else { return true };
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
    fn a_bearer_token_is_found_whatever_the_schemes_case() {
        assert_eq!(bearer_token("Bearer s3 cret"), Some("s3 cret"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

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
    fn gzip_is_used_when_listed_and_not_refused() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, GZIP;q=0.5"));
        assert!(accepts_gzip("identity, gzip"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip("x-gzip-ish"));
    }

    #[test]
    fn the_token_is_decoded_as_a_form_value_keeping_bad_escapes_as_they_are() {
        assert_eq!(token_from_query("x=1&token=a%2Fb%zz%&token=second").as_deref(), Some("a/b%zz%"));
        assert_eq!(token_from_query("tokens=x"), None);
    }
}
