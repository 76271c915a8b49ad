//! Opaque TCP: bytes forwarded both ways, unparsed, until either side closes.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::client::{self, TlsTarget};

pub async fn forward<C: AsyncRead + AsyncWrite + Unpin>(
    mut client: C,
    addr: SocketAddr,
    tls: Option<&TlsTarget>,
) {
    let mut server = match client::connect(addr, tls).await {
        Ok(server) => server,
        Err(error) => {
            // Closing the client connection is all TCP can say.
            debug!(%error, "opaque connection: upstream unreachable");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut client, &mut server).await {
        Ok((sent, received)) => debug!(%addr, sent, received, "opaque connection closed"),
        Err(error) => debug!(%addr, %error, "opaque connection failed"),
    }
}
