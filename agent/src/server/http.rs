//! HTTP/1.1 routing: `GET /healthz` (the agent's description, JSON), `GET /ws` with
//! the token check and the WebSocket upgrade, and `GET /metrics` (Prometheus) with
//! the same token check.

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
    let bearer = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let authorized = match bearer {
        Some(token) => shared.auth.allows_token(token.trim()),
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

/// The `?token=` check. Compared in constant time so the token cannot be guessed
/// byte by byte from response times.
pub(crate) struct TokenCheck {
    token: Option<String>,
    warned: AtomicBool,
}

impl TokenCheck {
    pub fn new(token: Option<String>) -> Self {
        Self { token: token.filter(|t| !t.is_empty()), warned: AtomicBool::new(false) }
    }

    pub fn allows(&self, query: Option<&str>) -> bool {
        self.allows_token(&query.and_then(token_from_query).unwrap_or_default())
    }

    /// Whether `given` is the configured token (or none is configured).
    pub fn allows_token(&self, given: &str) -> bool {
        let Some(expected) = &self.token else { return true };
        let ok: bool = given.as_bytes().ct_eq(expected.as_bytes()).into();
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

/// The percent-decoded value of `token` in a query string.
fn token_from_query(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("token=")?;
        Some(percent_decode(value))
    })
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_configured_token_allows_everyone() {
        let check = TokenCheck::new(None);
        assert!(check.allows(None));
        assert!(check.allows(Some("token=anything")));
        assert!(TokenCheck::new(Some(String::new())).allows(None));
    }

    #[test]
    fn a_configured_token_must_match_exactly() {
        let check = TokenCheck::new(Some("s3cret value".into()));
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
    fn percent_decoding_keeps_bad_escapes_as_they_are() {
        assert_eq!(percent_decode("a%2Fb%zz%"), "a/b%zz%");
    }
}
