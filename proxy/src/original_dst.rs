//! The destination a connection had before iptables redirected it to the proxy.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination of a redirected connection, or `None` when the connection was not
/// redirected: it was made to the proxy's own address, or the kernel keeps no NAT record of it
/// (ENOENT, for example when nf_conntrack is not loaded).
///
/// Asked in the connection's own family: SO_ORIGINAL_DST (level SOL_IP) for IPv4,
/// IP6T_SO_ORIGINAL_DST (level SOL_IPV6 = 41, optname 80) for IPv6. An IPv4 connection accepted
/// on a dual-stack IPv6 socket (a `[::]` listener without IPV6_V6ONLY) shows v4-mapped addresses
/// (::ffff:10.0.0.1) but was redirected by iptables, not ip6tables: it is asked as IPv4, which
/// Linux answers on an IPv6 socket too.
pub fn original_dst(stream: &TcpStream) -> io::Result<Option<SocketAddr>> {
    let local = stream.local_addr()?;
    let socket = SockRef::from(stream);
    let (original, local) = match local {
        SocketAddr::V4(_) => (socket.original_dst_v4(), local),
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ipv4) => (socket.original_dst_v4(), SocketAddr::from((ipv4, v6.port()))),
            None => (socket.original_dst_v6(), local),
        },
    };
    match original {
        Ok(addr) => Ok(addr.as_socket().filter(|addr| *addr != local)),
        Err(error) if error.raw_os_error() == Some(2) => Ok(None),
        Err(error) => Err(error),
    }
}
