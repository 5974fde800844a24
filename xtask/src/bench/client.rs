//! A minimal WebSocket client for the bench: one request, one answer, timed, with
//! the answer's size on the wire, or the processes list's rows decoded. Both agents
//! understand the plain commands (`get_metrics`, `get_disks`, `get_processes`); the
//! original ignores JSON ones.

use std::io::Read as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flate2::read::GzDecoder;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use socktop_agent::protocol::pb;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Bytes, Message};
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

    /// What the real client asks for, in the order it asks at a tick where it asks
    /// for all.
    pub const THE_REAL_CLIENTS: [Kind; 3] = [Kind::Metrics, Kind::Processes, Kind::Disks];

    pub fn request(self) -> &'static str {
        match self {
            Kind::Metrics => "get_metrics",
            Kind::Disks => "get_disks",
            Kind::Processes => "get_processes",
        }
    }

    /// Whether the real client asks for this at tick `n` (from 0) of its metrics
    /// timer, which ticks every `METRICS_EVERY`.
    pub fn asked_at_tick(self, n: usize) -> bool {
        let every = match self {
            Kind::Metrics => 1,
            Kind::Processes => PROCESSES_EVERY_N_METRICS,
            Kind::Disks => DISKS_EVERY_N_METRICS,
        };
        n.is_multiple_of(every)
    }
}

/// The real client's polling intervals (PROTOCOL.md, "Client behaviour"): metrics
/// every 500 ms, processes every 2 s, disks every 5 s.
pub const METRICS_EVERY: Duration = Duration::from_millis(500);
pub const PROCESSES_EVERY_N_METRICS: usize = 4;
pub const DISKS_EVERY_N_METRICS: usize = 10;

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
        let answer = self.answer(kind).await?;
        // Error answers are JSON text frames.
        let is_error = answer.is_text() && answer.starts_with(b"{\"error\"");
        Ok(Reply { elapsed: started.elapsed(), wire_bytes: wire_bytes(answer.len()), is_error })
    }

    /// The rows of one `get_processes` answer (protobuf, gzipped when large; both
    /// agents frame it so).
    pub async fn processes(&mut self) -> anyhow::Result<Vec<pb::Process>> {
        let answer = self.answer(Kind::Processes).await?;
        anyhow::ensure!(!answer.is_text(), "a text answer to get_processes: {}", String::from_utf8_lossy(&answer));
        let mut encoded = Vec::new();
        let protobuf: &[u8] = if answer.starts_with(&GZIP_MAGIC) {
            GzDecoder::new(&answer[..]).read_to_end(&mut encoded).context("gunzipping get_processes")?;
            &encoded
        } else {
            &answer
        };
        let list = pb::Processes::decode(protobuf).context("decoding get_processes")?;
        Ok(list.rows)
    }

    /// Sends one request and returns its answer's payload.
    async fn answer(&mut self, kind: Kind) -> anyhow::Result<Answer> {
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, self.round_trip(kind)).await;
        answer.with_context(|| format!("no answer to {} within {ANSWER_TIMEOUT:?}", kind.request()))?
    }

    async fn round_trip(&mut self, kind: Kind) -> anyhow::Result<Answer> {
        self.ws.send(Message::text(kind.request())).await.context("sending")?;
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(Answer::Text(text.into())),
                Some(Ok(Message::Binary(bytes))) => return Ok(Answer::Binary(bytes)),
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

/// An answer's payload, as it came.
enum Answer {
    Text(Bytes),
    Binary(Bytes),
}

impl Answer {
    fn is_text(&self) -> bool {
        matches!(self, Answer::Text(_))
    }
}

impl std::ops::Deref for Answer {
    type Target = Bytes;

    fn deref(&self) -> &Bytes {
        match self {
            Answer::Text(bytes) | Answer::Binary(bytes) => bytes,
        }
    }
}

/// The first bytes of a gzip member (RFC 1952 §2.3.1).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

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

    #[test]
    fn over_ten_seconds_the_real_clients_timer_asks_as_protocol_md_says() {
        // 500 ms ticks for 10 s: metrics every 500 ms, processes every 2 s, disks every 5 s.
        let ticks = 10_000 / METRICS_EVERY.as_millis() as usize;
        let asked = |kind: Kind| (0..ticks).filter(|&n| kind.asked_at_tick(n)).count();
        assert_eq!((asked(Kind::Metrics), asked(Kind::Processes), asked(Kind::Disks)), (20, 5, 2));
        assert!(Kind::THE_REAL_CLIENTS.iter().all(|kind| kind.asked_at_tick(0)));
    }
}
