//! The hostile clients: a stream of connections, one kind after another, each
//! doing one thing the agent must survive, and each ending by itself (at most
//! [`LIFETIME`]). What the agent did to each is counted per kind.
//!
//! WebSocket frames are written by hand (RFC 6455 §5.2) so they can be wrong on
//! purpose; client frames carry a mask bit with an all-zero key, which leaves the
//! payload as it is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Longest a hostile connection lives: past the agent's send timeout (30 s),
/// which is what ends a client that never reads.
const LIFETIME: Duration = Duration::from_secs(40);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Random bytes instead of an HTTP request.
    Garbage,
    /// A TLS ClientHello to the plain port.
    TlsHello,
    /// An upgrade with a token that is not the agent's.
    WrongToken,
    /// An upgrade with no token at all.
    MissingToken,
    /// Connects, then resets the connection at once.
    ConnectAndVanish,
    /// Connects and sends nothing.
    Silent,
    /// Sends the request head one byte a second.
    Slowloris,
    /// A frame header announcing 16 MiB, then part of it.
    OversizedFrame,
    /// A request split over continuation frames past the message limit.
    FragmentedFlood,
    /// A request in three fragments (legal: must be answered).
    Fragmented,
    /// A binary frame (must get an error answer).
    Binary,
    /// Asks for processes over and over and never reads an answer.
    NeverReads,
}

const KINDS: [Kind; 12] = [
    Kind::Garbage,
    Kind::TlsHello,
    Kind::WrongToken,
    Kind::MissingToken,
    Kind::ConnectAndVanish,
    Kind::Silent,
    Kind::Slowloris,
    Kind::OversizedFrame,
    Kind::FragmentedFlood,
    Kind::Fragmented,
    Kind::Binary,
    Kind::NeverReads,
];

/// What the agent did with one hostile connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    /// An HTTP status before any upgrade.
    Status(u16),
    /// A WebSocket answer (the legal fragmented request, the binary frame's error).
    Answered,
    /// The agent closed the connection.
    Closed,
    /// Still open when the client gave up (at [`LIFETIME`]).
    StillOpen,
    /// The client itself went away first (connect-and-vanish).
    Left,
    /// Connecting failed.
    ConnectFailed,
}

#[derive(Default)]
pub struct Outcome {
    counts: BTreeMap<(Kind, Verdict), u64>,
    /// Time from the hostile client's last byte to the agent's close, per kind.
    close_after: BTreeMap<Kind, Duration>,
}

impl Outcome {
    pub fn markdown(&self) -> String {
        let mut out =
            String::from("| hostile kind | what the agent did (connections) | slowest close |\n|---|---|---|\n");
        for kind in KINDS {
            let verdicts: Vec<String> = self
                .counts
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|((_, verdict), n)| format!("{verdict:?}: {n}"))
                .collect();
            let slowest = self.close_after.get(&kind).map_or("-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
            out += &format!("| {kind:?} | {} | {slowest} |\n", verdicts.join(", "));
        }
        out
    }
}

pub async fn run(port: u16, token: &'static str, per_second: u32, at_once: usize, run_for: Duration) -> Outcome {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let slots = Arc::new(Semaphore::new(at_once));
    let deadline = Instant::now() + run_for;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    let mut tasks = Vec::new();
    for kind in KINDS.iter().cycle() {
        tick.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        // Never more than `at_once` hostile connections: skip a beat when full.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue };
        let (kind, outcome) = (*kind, Arc::clone(&outcome));
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let verdict = tokio::time::timeout(LIFETIME, one(kind, port, token)).await.unwrap_or(Verdict::StillOpen);
            let mut outcome = outcome.lock().unwrap_or_else(|p| p.into_inner());
            *outcome.counts.entry((kind, verdict)).or_default() += 1;
            if verdict == Verdict::Closed {
                let slowest = outcome.close_after.entry(kind).or_default();
                *slowest = (*slowest).max(started.elapsed());
            }
            drop(slot);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Arc::try_unwrap(outcome).map_or_else(|_| Outcome::default(), |m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
}

async fn one(kind: Kind, port: u16, token: &str) -> Verdict {
    let Ok(mut stream) = connect(port).await else { return Verdict::ConnectFailed };
    let sent = match kind {
        Kind::Garbage => stream.write_all(&garbage(4096)).await,
        Kind::TlsHello => stream.write_all(&TLS_CLIENT_HELLO_START).await,
        Kind::WrongToken => return http_status(&mut stream, &upgrade_request("token=not-the-token")).await,
        Kind::MissingToken => return http_status(&mut stream, &upgrade_request("")).await,
        Kind::ConnectAndVanish => {
            // SO_LINGER 0: close with a reset, as a crashed client's kernel does.
            let _ = stream.set_zero_linger();
            return Verdict::Left;
        }
        Kind::Silent => Ok(()),
        Kind::Slowloris => return slowloris(&mut stream).await,
        _ => match upgrade(&mut stream, token).await {
            Ok(()) => frames(kind, &mut stream).await,
            Err(verdict) => return verdict,
        },
    };
    if sent.is_err() {
        return Verdict::Closed;
    }
    if kind == Kind::NeverReads {
        return never_read(&mut stream).await;
    }
    until_closed_or_answered(&mut stream).await
}

/// A loopback connection with a small receive buffer: a client that never
/// reads then ties up little kernel memory of its own, and the agent's send
/// buffer fills sooner.
async fn connect(port: u16) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(64 * 1024)?;
    socket.connect((std::net::Ipv4Addr::LOCALHOST, port).into()).await
}

/// What the hostile client sends once upgraded.
async fn frames(kind: Kind, stream: &mut TcpStream) -> std::io::Result<()> {
    match kind {
        Kind::OversizedFrame => {
            let mut head = vec![0x81, 0x80 | 127];
            head.extend_from_slice(&(16u64 << 20).to_be_bytes());
            head.extend_from_slice(&[0; 4]);
            stream.write_all(&head).await?;
            stream.write_all(&vec![b'x'; 256 * 1024]).await
        }
        Kind::FragmentedFlood => {
            stream.write_all(&frame(0x1, false, b"get_")).await?;
            let chunk = vec![b'x'; 8 * 1024];
            for _ in 0..16 {
                stream.write_all(&frame(0x0, false, &chunk)).await?;
            }
            Ok(())
        }
        Kind::Fragmented => {
            stream.write_all(&frame(0x1, false, b"get_")).await?;
            stream.write_all(&frame(0x0, false, b"met")).await?;
            stream.write_all(&frame(0x0, true, b"rics")).await
        }
        Kind::Binary => stream.write_all(&frame(0x2, true, &[0, 159, 146, 150])).await,
        _ => Ok(()),
    }
}

/// Asks for processes in batches and never reads. Once the socket buffers are
/// full a write blocks; it fails when the agent gives up on the connection (or
/// the lifetime ends first).
async fn never_read(stream: &mut TcpStream) -> Verdict {
    let batch = frame(0x1, true, b"get_processes").repeat(1024);
    loop {
        if stream.write_all(&batch).await.is_err() {
            return Verdict::Closed;
        }
    }
}

/// The request head, one byte a second.
async fn slowloris(stream: &mut TcpStream) -> Verdict {
    for byte in upgrade_request("token=x").bytes().take(200) {
        if stream.write_all(&[byte]).await.is_err() {
            return Verdict::Closed;
        }
        let mut probe = [0u8; 512];
        if let Ok(read) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut probe)).await {
            return match read {
                Ok(0) | Err(_) => Verdict::Closed,
                Ok(_) => status_of(&probe).map_or(Verdict::Closed, Verdict::Status),
            };
        }
    }
    Verdict::StillOpen
}

/// Reads until the agent closes (Closed) or sends a frame (Answered).
async fn until_closed_or_answered(stream: &mut TcpStream) -> Verdict {
    let mut buffer = [0u8; 4096];
    match stream.read(&mut buffer).await {
        Ok(0) | Err(_) => Verdict::Closed,
        Ok(n) => match status_of(&buffer[..n]) {
            Some(status) => Verdict::Status(status),
            // A close frame is the agent closing; any other frame is an answer.
            None if buffer[0] & 0x0f == 0x8 => Verdict::Closed,
            None => Verdict::Answered,
        },
    }
}

fn upgrade_request(query: &str) -> String {
    let path = if query.is_empty() { "/ws".to_owned() } else { format!("/ws?{query}") };
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Upgrades with the right token; Err with the verdict when the agent refused.
async fn upgrade(stream: &mut TcpStream, token: &str) -> Result<(), Verdict> {
    match http_status(stream, &upgrade_request(&format!("token={token}"))).await {
        Verdict::Status(101) => Ok(()),
        other => Err(other),
    }
}

/// Sends `request` and reads the response head's status.
async fn http_status(stream: &mut TcpStream, request: &str) -> Verdict {
    if stream.write_all(request.as_bytes()).await.is_err() {
        return Verdict::Closed;
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return Verdict::Closed,
        }
    }
    status_of(&head).map_or(Verdict::Closed, Verdict::Status)
}

fn status_of(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A masked client frame (zero mask key) with `opcode`.
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=65_535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    out
}

/// Bytes from a small xorshift generator: garbage, but the same on every run.
fn garbage(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The first bytes of a TLS 1.2 ClientHello record (RFC 5246 §7.4.1.2).
const TLS_CLIENT_HELLO_START: [u8; 11] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_follow_rfc_6455_lengths() {
        assert_eq!(frame(0x1, true, b"hi"), [0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
        assert_eq!(&frame(0x2, false, &[0; 200])[..4], [0x02, 0x80 | 126, 0, 200]);
    }

    #[test]
    fn statuses_are_read_from_the_response_head() {
        assert_eq!(status_of(b"HTTP/1.1 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(status_of(b"\x81\x05hello"), None);
    }
}
