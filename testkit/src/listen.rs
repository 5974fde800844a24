//! Where an agent listens. Started with `--port 0`, it binds a port the kernel
//! chose and logs `listening on ws://HOST:PORT/ws` (`wss://` with TLS): no port is
//! probed free and handed on (another process may take it in between). Only
//! programs that cannot say where they listen (the original agent, the
//! exporters, Prometheus) still get a port from [`unused_port`].

/// The port of the agent's `listening on` log line.
pub fn parse_listening_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("listening on ")?..];
    let address = rest.split("://").nth(1)?.split('/').next()?;
    address.rsplit(':').next()?.parse().ok()
}

/// A loopback port nobody listens on now, for a program that cannot bind port 0
/// and say which port it got. Racy by nature: another process may bind it before
/// the program does; callers that can, check the program came up on it.
pub fn unused_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_read_from_the_listening_line() {
        let line = "2026-12-07T03:00:00Z  INFO socktop_agent: listening on ws://127.0.0.1:40123/ws";
        assert_eq!(parse_listening_port(line), Some(40123));
        assert_eq!(parse_listening_port("INFO listening on wss://[::1]:8443/ws (SHA-256 ab)"), Some(8443));
        assert_eq!(parse_listening_port("INFO cpu source: proc"), None);
    }
}
