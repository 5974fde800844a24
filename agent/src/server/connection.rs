//! One WebSocket client: reads requests, answers each exactly once and in order,
//! and never sends anything unasked (the socktop client breaks on unsolicited
//! frames, server pings included). Up to `pipelined_requests` answers are
//! collected concurrently; reading pauses while that many are pending.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use hyper_tungstenite::HyperWebsocketStream;
use hyper_tungstenite::tungstenite::Message;
use tokio::sync::watch;

use super::Shared;
use crate::protocol::answer::ErrorAnswer;
use crate::protocol::framing::json_frame;
use crate::protocol::request::Form;

type Answer = Pin<Box<dyn Future<Output = Message> + Send>>;

pub(super) async fn run(websocket: HyperWebsocketStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let _client = shared.service.client_connected();
    let (mut sink, mut requests) = websocket.split();
    let mut pending: FuturesOrdered<Answer> = FuturesOrdered::new();
    let limits = shared.config.limits;
    // One timer for the connection, pushed back on every message, rather than a
    // timeout built and dropped around each read: that registered and removed a
    // timer-wheel entry (under the driver's lock) several times per request.
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);
    loop {
        let may_read = pending.len() < limits.pipelined_requests;
        tokio::select! {
            biased;
            _ = super::stopped(&mut stop) => {
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
            Some(answer) = pending.next(), if !pending.is_empty() => {
                if let Err(e) = sink.send(answer).await {
                    tracing::debug!(error = %e, "sending an answer failed");
                    break;
                }
            }
            () = &mut idle, if may_read => {
                tracing::debug!("closing a connection idle for {:?}", limits.idle_timeout);
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
            next = requests.next(), if may_read => {
                idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
                let message = match next {
                    None => break,
                    Some(Err(e)) => {
                        // Protocol violations and oversized messages end this
                        // connection only.
                        tracing::debug!(error = %e, "closing a connection after a read error");
                        break;
                    }
                    Some(Ok(message)) => message,
                };
                if let Some(answer) = answer_for(message, &shared) {
                    pending.push_back(answer);
                }
            }
        }
    }
}

/// The answer to one incoming message; `None` for control frames, which
/// tungstenite answers itself (Pong for Ping, Close for Close).
fn answer_for(message: Message, shared: &Arc<Shared>) -> Option<Answer> {
    match message {
        Message::Text(text) => {
            let service = Arc::clone(&shared.service);
            Some(Box::pin(async move { service.answer_text(text.as_str()).await }))
        }
        Message::Binary(bytes) => {
            let error = ErrorAnswer::new(
                "requests are text frames; binary frames are not understood",
                format!("<{} binary bytes>", bytes.len()),
            );
            Some(Box::pin(std::future::ready(json_frame(&error, Form::Command, &error.request))))
        }
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => None,
    }
}
