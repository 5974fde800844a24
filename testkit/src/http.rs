//! A plain HTTP/1.0 GET: the agent's `/metrics` and `/healthz`, an exporter's
//! scrape, a Prometheus server's API. HTTP/1.0, so the answer ends where the
//! connection does and no client library is needed; the answer's parser takes
//! bytes, so the async callers (the bench) share it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// Bytes of the body as it came on the wire (compressed when it was).
    pub wire_bytes: usize,
}

/// The request `GET path` for `address` (host:port) with `headers` added.
pub fn request(address: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// `GET path` on `address` (host:port), `headers` added; 10 s at most per read.
pub fn get(address: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request(address, path, headers).as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP answer from {address}"))
    })
}

/// A whole HTTP/1.x answer: status line, headers, body.
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let body = raw[split + 4..].to_vec();
    Some(Response { status, headers, wire_bytes: body.len(), body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_split_into_status_headers_and_body() {
        let raw = b"HTTP/1.0 401 Unauthorized\r\nContent-Type: text/plain\r\nX-A:b:c\r\n\r\nno token\r\n\r\nmore";
        let answer = parse_response(raw).expect("an answer");
        assert_eq!(answer.status, 401);
        assert_eq!(answer.headers["content-type"], "text/plain");
        assert_eq!(answer.headers["x-a"], "b:c");
        assert_eq!(answer.body, b"no token\r\n\r\nmore");
        assert_eq!(answer.wire_bytes, 16);
        assert!(parse_response(b"HTTP/1.0 200 OK\r\n").is_none());
    }

    #[test]
    fn a_request_names_its_host_and_headers() {
        assert_eq!(
            request("127.0.0.1:9", "/metrics", &[("Accept-Encoding", "gzip")]),
            "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:9\r\nAccept-Encoding: gzip\r\n\r\n"
        );
    }
}
