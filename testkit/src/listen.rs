//! Where a server listens, never guessed ahead. Every server the tests and
//! measurements start binds port 0, so the kernel picks a port nobody holds, and
//! the port is then read back: our agent logs it (`listening on ws://HOST:PORT/ws`,
//! [`parse_listening_port`]); for other programs (the original agent, which does
//! not say, and the exporters and Prometheus, each logging it in a format of its
//! own) the kernel is asked which TCP port the process listens on
//! ([`listening_ports`]). A port probed free, closed and handed on
//! could be taken by anyone in between; the one test that must name a port before
//! its server starts holds it meanwhile ([`ReservedPort`]).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Child;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// The port of the agent's `listening on` log line.
pub fn parse_listening_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("listening on ")?..];
    let address = rest.split("://").nth(1)?.split('/').next()?;
    address.rsplit(':').next()?.parse().ok()
}

/// The TCP ports process `pid` listens on (IPv4 and IPv6), sorted: its sockets
/// (`/proc/PID/fd` links `socket:[INODE]`) looked up among the listening sockets
/// of its network namespace (`/proc/PID/net/tcp` and `tcp6`, proc(5)).
pub fn listening_ports(pid: u32) -> io::Result<Vec<u16>> {
    let mut inodes = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        // A descriptor closed while the folder is read is not a listener.
        let Ok(link) = std::fs::read_link(entry?.path()) else { continue };
        inodes.extend(link.to_str().and_then(parse_socket_inode));
    }
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        // A kernel without IPv6 has no tcp6 table.
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        let listening = parse_listening_sockets(&text);
        ports.extend(listening.iter().filter(|(inode, _)| inodes.contains(inode)).map(|&(_, port)| port));
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// Waits until `child` listens on one TCP port and returns it; an error when it
/// exits first, listens on several, or not within `timeout`.
pub fn wait_for_listening_port(child: &mut Child, timeout: Duration) -> io::Result<u16> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(port) = only_port(child.id())? {
            return Ok(port);
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!("process {} exited with {status} before listening", child.id())));
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("process {} did not listen", child.id())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one port process `pid` listens on, `None` before it listens; an error when
/// it listens on several (which of them was meant cannot be told).
pub fn only_port(pid: u32) -> io::Result<Option<u16>> {
    match listening_ports(pid)?[..] {
        [] => Ok(None),
        [port] => Ok(Some(port)),
        ref several => Err(io::Error::other(format!("process {pid} listens on several ports: {several:?}"))),
    }
}

/// The inode of a `/proc/PID/fd` link naming a socket (`socket:[12345]`).
pub fn parse_socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// `(inode, local port)` of each listening socket (state `0A`, TCP_LISTEN) in a
/// `/proc/net/tcp` or `tcp6` table: the local address is `HEXADDR:HEXPORT`, the
/// inode the tenth column.
pub fn parse_listening_sockets(table: &str) -> Vec<(u64, u16)> {
    const TCP_LISTEN: &str = "0A";
    let row = |line: &str| {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if *fields.get(3)? != TCP_LISTEN {
            return None;
        }
        let port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
        Some((fields.get(9)?.parse().ok()?, port))
    };
    table.lines().skip(1).filter_map(row).collect()
}

/// A loopback port held, bound but not listening, for a server started later on
/// it: a client told the port meanwhile is refused, as by no server at all, and
/// no other socket can take the port (the kernel hands it out to no `bind` to port
/// 0 or outgoing connection, and a plain `bind` to it fails). The server binds it
/// anyway because both sockets set SO_REUSEADDR (socket(7): allowed while neither
/// listens), as Rust's `TcpListener::bind` does. Dropping it frees the port.
pub struct ReservedPort {
    socket: Socket,
    port: u16,
}

impl ReservedPort {
    /// Reserves a port the kernel chose on 127.0.0.1.
    pub fn on_loopback() -> io::Result<ReservedPort> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        let port = socket.local_addr()?.as_socket().map(|address| address.port());
        let port = port.ok_or_else(|| io::Error::other("a socket bound to 127.0.0.1 has no IP address"))?;
        Ok(ReservedPort { socket, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl std::fmt::Debug for ReservedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReservedPort").field("port", &self.port).field("socket", &self.socket).finish()
    }
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

    #[test]
    fn only_listening_rows_of_the_tcp_tables_count() {
        // Captured from /proc/net/tcp and tcp6 (trailing blanks cut): listeners on
        // 0.0.0.0:2024 and 127.0.0.1:56975, a connection to the second from each
        // side (the accepted side has inode 0), a listener on [::1]:35457.
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1318 1 00000000a05d664c 100 0 0 10 0\n\
   1: 0100007F:DE8F 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 1325226 2 00000000c988db6b 100 0 0 10 0\n\
   2: 0100007F:8806 0100007F:DE8F 01 00000000:00000000 00:00000000 00000000     0        0 1325227 2 0000000045054399 20 0 0 10 -1\n\
   3: 0100007F:DE8F 0100007F:8806 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000048ba9f45 20 0 0 10 -1\n";
        assert_eq!(parse_listening_sockets(tcp), [(1318, 2024), (1325226, 56975)]);
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000001000000:8A81 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1325225 1 00000000001ce53d 100 0 0 10 0\n";
        assert_eq!(parse_listening_sockets(tcp6), [(1325225, 35457)]);
        assert_eq!(parse_listening_sockets("  sl  local_address\n   0: garbage\n"), []);
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(parse_socket_inode("socket:[29133]"), Some(29133));
        assert_eq!(parse_socket_inode("pipe:[29133]"), None);
        assert_eq!(parse_socket_inode("/dev/null"), None);
    }

    #[test]
    fn the_kernel_names_the_port_a_listener_got() {
        let pid = std::process::id();
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("bound address").port();
        assert!(listening_ports(pid).expect("read /proc").contains(&port));
        drop(listener);
        assert!(!listening_ports(pid).expect("read /proc").contains(&port));
    }

    #[test]
    fn a_reserved_port_refuses_clients_and_others_but_lets_a_server_bind_it() {
        let reserved = ReservedPort::on_loopback().expect("reserve");
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, reserved.port()));
        let refused = std::net::TcpStream::connect(address).expect_err("nobody listens yet");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        let other = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        assert!(other.bind(&address.into()).is_err(), "a plain bind takes a reserved port");
        let server = std::net::TcpListener::bind(address).expect("the server binds the reserved port");
        std::net::TcpStream::connect(address).expect("the server answers");
        drop(server);
        std::net::TcpListener::bind(address).expect("and binds it again after a restart");
    }
}
