//! The destination a connection had before iptables redirected it to the proxy.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination of a redirected connection (SO_ORIGINAL_DST), or `None` when the
/// connection was not redirected: it was made to the proxy's own address, or the kernel keeps no
/// NAT record of it (ENOENT, for example when nf_conntrack is not loaded).
pub fn original_dst(stream: &TcpStream) -> io::Result<Option<SocketAddr>> {
    let local = stream.local_addr()?;
    let socket = SockRef::from(stream);
    let original = match local {
        SocketAddr::V4(_) => socket.original_dst_v4(),
        SocketAddr::V6(_) => socket.original_dst_v6(),
    };
    match original {
        Ok(addr) => Ok(addr.as_socket().filter(|addr| *addr != local)),
        Err(error) if error.raw_os_error() == Some(2) => Ok(None),
        Err(error) => Err(error),
    }
}
