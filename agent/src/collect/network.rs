//! Cumulative bytes per network interface from `/proc/net/dev` (proc(5)); the
//! client computes rates from successive answers.

use serde::Serialize;

/// Cumulative byte counters of one network interface.
/// (Serialises as the socktop answer's network object.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub name: String,
    pub received: u64,
    pub transmitted: u64,
}

/// Parses `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets ...
/// (8 receive fields) tx_bytes ...`.
pub fn parse_net_dev(text: &str) -> Vec<Network> {
    text.lines().skip(2).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Network> {
    let (name, counters) = line.split_once(':')?;
    let mut fields = counters.split_ascii_whitespace().map(|f| f.parse::<u64>().unwrap_or(0));
    let received = fields.next()?;
    let transmitted = fields.nth(7)?;
    Some(Network { name: name.trim().to_owned(), received, transmitted })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_receive_and_transmit_bytes_of_each_interface() {
        let nets = parse_net_dev(include_str!("../../tests/fixtures/proc/net_dev"));
        let names: Vec<_> = nets.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["lo", "eth0", "wlp0s20f3"]);
        assert_eq!(nets[1], Network { name: "eth0".into(), received: 987_654_321, transmitted: 123_456_789 });
        // Counters past 2^32, as on a busy link.
        assert_eq!(nets[2].received, 5_000_000_000);
    }

    #[test]
    fn truncated_lines_are_skipped() {
        let text = "h1\nh2\n  eth0: 1 2 3\n  eth1: 1 0 0 0 0 0 0 0 9 0 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(text), vec![Network { name: "eth1".into(), received: 1, transmitted: 9 }]);
    }
}
