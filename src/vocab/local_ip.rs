//! Which local address a server advertises when its host setting is unset
//! (`DYN_TCP_RPC_HOST`, `DYN_HTTP_RPC_HOST`, `DYN_EVENT_PLANE_HOST`).

use std::net::{IpAddr, Ipv4Addr, UdpSocket};

/// The address of the interface that routes off-host, as other hosts would reach us.
///
/// Connecting a UDP socket sends no packet: it only asks the kernel for a route, which
/// picks the source address. Without a route (an isolated machine) loopback is used.
pub fn detect_local_ip() -> IpAddr {
    let routed = || -> std::io::Result<IpAddr> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        // A documentation address (RFC 5737): only the routing decision matters.
        socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9))?;
        Ok(socket.local_addr()?.ip())
    };
    match routed() {
        Ok(ip) if !ip.is_unspecified() => ip,
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}
