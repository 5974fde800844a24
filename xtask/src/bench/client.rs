//! A minimal WebSocket client for the bench: one request, one answer, timed, with
//! the answer's size on the wire. Both agents understand the plain commands
//! (`get_metrics`, `get_disks`, `get_processes`); the original ignores JSON ones.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The requests the bench sends, as the real client spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Metrics,
    Disks,
    Processes,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Metrics, Kind::Disks, Kind::Processes];

    pub fn request(self) -> &'static str {
        match self {
            Kind::Metrics => "get_metrics",
            Kind::Disks => "get_disks",
            Kind::Processes => "get_processes",
        }
    }
}

/// One answer: how long it took, how many bytes it was on the wire, and whether
/// it was an error answer (`{"error":...}`) rather than the data asked for.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub elapsed: Duration,
    pub wire_bytes: usize,
    pub is_error: bool,
}

/// An answer that does not come within this long is an error, which keeps every
/// phase bounded in time even against a stuck agent.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(port: u16) -> anyhow::Result<Client> {
        Self::connect_url(&format!("ws://{}:{port}/ws", Ipv4Addr::LOCALHOST)).await
    }

    /// Connects to `url` (`ws://HOST:PORT/ws`, with a `?token=` when the agent wants one).
    pub async fn connect_url(url: &str) -> anyhow::Result<Client> {
        let connect = tokio_tungstenite::connect_async_with_config(url, None, true);
        let (ws, _) = tokio::time::timeout(ANSWER_TIMEOUT, connect)
            .await
            .context("connecting timed out")?
            .context("connecting")?;
        Ok(Client { ws })
    }

    /// Sends one request and waits for its answer.
    pub async fn ask(&mut self, kind: Kind) -> anyhow::Result<Reply> {
        let started = Instant::now();
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, self.round_trip(kind)).await;
        let (payload, is_error) =
            answer.with_context(|| format!("no answer to {} within {ANSWER_TIMEOUT:?}", kind.request()))??;
        Ok(Reply { elapsed: started.elapsed(), wire_bytes: wire_bytes(payload), is_error })
    }

    /// The payload length of the answer, and whether it is an error answer (error
    /// answers are JSON text frames).
    async fn round_trip(&mut self, kind: Kind) -> anyhow::Result<(usize, bool)> {
        self.ws.send(Message::text(kind.request())).await.context("sending")?;
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok((text.len(), text.starts_with("{\"error\""))),
                Some(Ok(Message::Binary(bytes))) => return Ok((bytes.len(), false)),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => bail!("the agent closed the connection"),
                Some(Err(e)) => return Err(e).context("reading the answer"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Bytes of a server frame carrying `payload` bytes: the payload plus the frame
/// header (RFC 6455 §5.2: 2 bytes, +2 or +8 for the extended length; server
/// frames are not masked).
fn wire_bytes(payload: usize) -> usize {
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    payload + header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_grow_with_the_payload_length() {
        assert_eq!(wire_bytes(125), 127);
        assert_eq!(wire_bytes(126), 130);
        assert_eq!(wire_bytes(70_000), 70_010);
    }
}
