//! One WebSocket client: reads requests, answers each exactly once and in order,
//! and never sends anything unasked (the socktop client breaks on unsolicited
//! frames, server pings included). Up to `pipelined_requests` answers are
//! collected concurrently; reading pauses while that many are pending. A request
//! whose handling panics is answered with an error; the connection goes on.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper_tungstenite::HyperWebsocketStream;
use hyper_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use super::Shared;
use crate::protocol::answer::ErrorAnswer;
use crate::protocol::frame::Frame;
use crate::protocol::framing::json_frame;
use crate::protocol::request::Form;

/// Serves one upgraded connection until the client leaves, stays silent for
/// `idle_timeout`, stops reading, breaks the protocol, or shutdown is asked for.
///
/// Its state lives in its task for as long as the client stays connected, idle
/// clients included, so it is kept small: the stream is not split in two halves
/// (that put it behind a lock of its own, in an allocation of its own), answers
/// wait in a plain queue rather than a `FuturesOrdered` (two allocations at
/// connection and one per answer), frames are sent from one place, in a boxed
/// future that exists only while sending, and this is a plain function returning
/// the future, as the arguments of an `async fn` are kept twice in its state
/// (rust-lang/rust#62958). Measured (`cargo xtask bench --only connections`):
/// the task of an idle connection went from 1,664 to 1,024 bytes.
#[expect(clippy::manual_async_fn, reason = "an async fn would keep its arguments twice (352 bytes more, measured)")]
pub(super) fn run(
    mut websocket: HyperWebsocketStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    async move {
        let _client = shared.service.client_connected();
        let limits = &shared.config.limits;
        let mut pending: VecDeque<Answer> = VecDeque::new();
        // One timer for the connection, pushed back on every message, rather than a
        // timeout built and dropped around each read: that registered and removed a
        // timer-wheel entry (under the driver's lock) several times per request.
        let idle = tokio::time::sleep(limits.idle_timeout);
        tokio::pin!(idle);
        loop {
            let may_read = pending.len() < limits.pipelined_requests;
            // The frame to send next, and whether the connection ends after it.
            let (frame, last) = tokio::select! {
                biased;
                _ = super::stopped(&mut stop) => (Message::Close(None), true),
                answer = oldest_answer(&mut pending), if !pending.is_empty() => (message(answer), false),
                () = &mut idle, if may_read => {
                    tracing::debug!("closing a connection idle for {:?}", limits.idle_timeout);
                    (Message::Close(None), true)
                }
                request = websocket.next(), if may_read => {
                    idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
                    match request {
                        None => break,
                        Some(Err(e)) => {
                            // Protocol violations and oversized messages end this
                            // connection only.
                            tracing::debug!(error = %e, "closing a connection after a read error");
                            break;
                        }
                        Some(Ok(message)) => {
                            pending.extend(answer_for(message, &shared));
                            continue;
                        }
                    }
                }
            };
            if let Err(e) = Box::pin(send(&mut websocket, frame, limits.send_timeout)).await {
                tracing::debug!(error = %e, "sending failed; closing the connection");
                break;
            }
            if last {
                break;
            }
        }
    }
}

/// An answer in the connection's queue: being collected by a task of its own, or
/// ready at once.
enum Answer {
    /// `request` names the request in the error answer sent should the task panic.
    Collecting {
        task: AbortOnDropHandle<Frame>,
        request: Utf8Bytes,
    },
    Ready(Frame),
}

/// Resolves to the oldest answer once it is ready, taking it off the queue. Answers
/// go out in the order their requests came; later ones make progress meanwhile in
/// their own tasks. Dropped before it resolves (another branch won the select), it
/// leaves the queue as it was.
fn oldest_answer(pending: &mut VecDeque<Answer>) -> impl Future<Output = Frame> + '_ {
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        let Some(oldest) = pending.front_mut() else { return Poll::Pending };
        let frame = match oldest {
            // A clone of a frame is one of its shared bytes (a count).
            Answer::Ready(frame) => frame.clone(),
            Answer::Collecting { task, request } => match ready!(Pin::new(task).poll(cx)) {
                Ok(frame) => frame,
                Err(e) => {
                    tracing::error!(error = %e, "answering a request panicked; it gets an error answer");
                    crate::service::internal_error(request.as_str())
                }
            },
        };
        pending.pop_front();
        Poll::Ready(frame)
    })
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    WebSocket(#[from] hyper_tungstenite::tungstenite::Error),
    #[error("the client read nothing for {0:?}")]
    NotRead(Duration),
}

/// Sends one frame, giving up on a client that does not take it within `limit`.
/// Unbounded, a client that stops reading would hold its slot and its pending
/// answers for good once the socket buffers are full: neither the idle timer
/// (it counts from the client's last message) nor TCP keepalive (its kernel
/// still acknowledges) ends such a connection.
async fn send(websocket: &mut HyperWebsocketStream, message: Message, limit: Duration) -> Result<(), SendError> {
    match tokio::time::timeout(limit, websocket.send(message)).await {
        Ok(sent) => Ok(sent?),
        Err(_) => Err(SendError::NotRead(limit)),
    }
}

/// The WebSocket message of an answer frame, over the frame's own bytes: a
/// cached answer goes to each client without a copy.
fn message(frame: Frame) -> Message {
    match frame {
        Frame::Binary(bytes) => Message::Binary(bytes),
        Frame::Text(text) => {
            // `Text` is UTF-8 by construction; tungstenite's type cannot know
            // that, so it checks again: a read of the bytes, not a copy.
            let bytes = text.into_bytes();
            match Utf8Bytes::try_from(bytes.clone()) {
                Ok(text) => Message::Text(text),
                Err(error) => {
                    tracing::error!(%error, "an answer's text is not UTF-8; sending it repaired");
                    Message::text(String::from_utf8_lossy(&bytes).into_owned())
                }
            }
        }
    }
}

/// The answer to one incoming message; `None` for control frames, which
/// tungstenite answers itself (Pong for Ping, Close for Close).
fn answer_for(message: Message, shared: &Arc<Shared>) -> Option<Answer> {
    match message {
        Message::Text(request) => {
            let service = Arc::clone(&shared.service);
            // Each answer is its own task, so it makes progress while this
            // connection waits on a slow reader. Polled only by this task, an
            // answer queued for a cache's lock would be handed the lock (it is
            // fair) and keep it, unpolled, for as long as the send waits: every
            // other client asking for that kind would wait too. A panic ends the
            // task, not the connection; poisoned mutexes are taken as they are
            // (see `sync`), each value behind them valid on its own.
            let text = request.clone();
            let task = AbortOnDropHandle::new(tokio::spawn(async move { service.answer_text(text.as_str()).await }));
            Some(Answer::Collecting { task, request })
        }
        Message::Binary(bytes) => {
            let error = ErrorAnswer::new(
                "requests are text frames; binary frames are not understood",
                format!("<{} binary bytes>", bytes.len()),
            );
            Some(Answer::Ready(json_frame(&error, Form::Command, &error.request)))
        }
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_becomes_a_message_over_the_same_bytes() {
        let text = Frame::text(String::from(r#"{"cpu_total":1.5}"#));
        let Frame::Text(ref shared) = text else { unreachable!() };
        let at = shared.as_bytes().as_ptr();
        let Message::Text(sent) = message(text.clone()) else { panic!("expected a text message") };
        assert_eq!(sent.as_str(), r#"{"cpu_total":1.5}"#);
        assert_eq!(sent.as_str().as_ptr(), at, "the text was copied");

        let binary = Frame::binary(vec![0x1f, 0x8b, 8, 0]);
        let Frame::Binary(ref shared) = binary else { unreachable!() };
        let at = shared.as_ptr();
        let Message::Binary(sent) = message(binary.clone()) else { panic!("expected a binary message") };
        assert_eq!(&sent[..], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(sent.as_ptr(), at, "the binary payload was copied");
    }
}
