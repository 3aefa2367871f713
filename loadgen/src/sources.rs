//! Source addresses: enough loopback addresses that N connections fit the ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Fraction of the ephemeral range planned per source address, leaving room for others.
const PORT_USE_FRACTION: f64 = 0.9;
/// Connections planned per source address. connect()'s search for a free port slows as an
/// address fills: 19,000 connections from one address cost 363 µs of kernel time each
/// (2,526 conn/s); from 32 addresses, 69 µs (9,941 conn/s). Measured with loadgen on the
/// 2-core dev VM against one engine reactor.
const CONNECTIONS_PER_SOURCE_PLANNED: usize = 1024;

/// The ephemeral port range from the kernel (`net.ipv4.ip_local_port_range`).
pub fn ephemeral_ports() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<usize>().ok());
            Some(parts.next()??..=parts.next()??)
        })
        .map_or(28_232, |range| range.count())
}

/// Source addresses for `connections` to `targets`: the given list, else 127.0.0.2… when
/// every target is on IPv4 loopback (one per [`CONNECTIONS_PER_SOURCE_PLANNED`]), else the
/// OS's choice (empty).
pub fn plan(
    targets: &[SocketAddr],
    connections: usize,
    given: &[IpAddr],
    ports: usize,
) -> Vec<IpAddr> {
    if !given.is_empty() {
        return given.to_vec();
    }
    if !targets.iter().all(|t| t.ip().is_loopback() && t.is_ipv4()) {
        return Vec::new();
    }
    let per_addr =
        ((ports as f64 * PORT_USE_FRACTION) as usize).clamp(1, CONNECTIONS_PER_SOURCE_PLANNED);
    let count = connections.div_ceil(per_addr).clamp(1, 253 * 256);
    // 127.0.t.f with f in 2..=254: 127.0.0.2 onwards, never .0/.1/.255.
    (0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, (i / 253) as u8, (i % 253) as u8 + 2)))
        .collect()
}

/// Connections each source address can carry with this port range.
pub fn capacity(addrs: usize, ports: usize) -> usize {
    addrs.max(1) * ((ports as f64 * PORT_USE_FRACTION) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enough_loopback_sources_for_the_port_range() {
        let target: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let addrs = plan(&[target], 100_000, &[], 28_232);
        assert_eq!(addrs.len(), 98);
        assert_eq!(addrs[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert!(capacity(addrs.len(), 28_232) >= 100_000);
        let remote: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert!(plan(&[remote], 10, &[], 28_232).is_empty());
        assert!(plan(&[target, remote], 10, &[], 28_232).is_empty());
        let many = plan(&[target], 10_000_000, &[], 28_232);
        let unique: std::collections::HashSet<_> = many.iter().collect();
        assert_eq!(unique.len(), many.len());
    }
}
