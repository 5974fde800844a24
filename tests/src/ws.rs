//! A raw WebSocket client for the tests that send what the real client never
//! would (bad requests, pipelined floods, pings), and decoding of every answer
//! form the protocol has.

use std::io::Read;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `url` (`ws://HOST:PORT/ws...`).
pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("WebSocket connect");
    ws
}

/// The next data frame, failing the test after 10 s.
pub async fn next_frame(ws: &mut Ws) -> Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("answer within 10 s")
            .expect("connection open")
            .expect("valid frame");
        if !matches!(message, Message::Pong(_)) {
            return message;
        }
    }
}

/// An answer as the protocol frames it: JSON (text, or gzipped binary) or protobuf.
#[derive(Debug)]
pub enum Answer {
    Json(serde_json::Value),
    Processes(socktop_connector::pb::Processes),
}

pub fn decode(message: Message) -> Answer {
    let bytes = match message {
        Message::Text(text) => return Answer::Json(serde_json::from_str(text.as_str()).expect("JSON text frame")),
        Message::Binary(bytes) => bytes.to_vec(),
        other => panic!("unexpected frame {other:?}"),
    };
    let payload = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out).expect("gzip");
        out
    } else {
        bytes
    };
    match serde_json::from_slice(&payload) {
        Ok(json) => Answer::Json(json),
        Err(_) => Answer::Processes(socktop_connector::pb::Processes::decode(&payload[..]).expect("protobuf")),
    }
}

/// Sends one text request and decodes the next answer.
pub async fn ask(ws: &mut Ws, request: &str) -> Answer {
    ws.send(Message::text(request)).await.expect("send");
    decode(next_frame(ws).await)
}
