//! Reads the ALPN protocols and the server name out of a TLS ClientHello without terminating it:
//! the inbound side tells a connection from another proxy (ALPN braid/*) from an app's own TLS,
//! which passes through untouched; egress tells which external service an app's TLS is for.
//! Pure, and fuzzed with the protocol detection.

/// What the first bytes of a TLS connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// The whole ClientHello was read.
    Read(ClientHello),
    /// Not all of the first record yet: this many bytes in total are needed.
    NeedBytes(usize),
    /// Not a TLS ClientHello we can read.
    NotHello,
}

/// Inspects the first TLS record.
pub fn parse(bytes: &[u8]) -> Hello {
    if bytes.len() < 5 {
        return Hello::NeedBytes(5);
    }
    if bytes[0] != 0x16 || bytes[1] != 0x03 {
        return Hello::NotHello;
    }
    let record_len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    if record_len > 16 * 1024 + 256 {
        return Hello::NotHello;
    }
    if bytes.len() < 5 + record_len {
        return Hello::NeedBytes(5 + record_len);
    }
    read_client_hello(&bytes[5..5 + record_len]).map_or(Hello::NotHello, Hello::Read)
}

/// What a ClientHello offers that the proxy reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// ALPN protocols, empty when it offers none.
    pub alpn: Vec<Vec<u8>>,
    /// The host name of its server_name extension, lower case; `None` without one (or with one
    /// that is not a DNS name).
    pub server_name: Option<String>,
}

/// A cursor that never reads past its slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn read_client_hello(handshake: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(handshake);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let length = r.take(3)?;
    let length = (usize::from(length[0]) << 16) | (usize::from(length[1]) << 8) | usize::from(length[2]);
    let mut hello = Reader(r.take(length)?);
    hello.take(2 + 32)?; // legacy_version, random
    hello.vec8()?; // session id
    hello.vec16()?; // cipher suites
    hello.vec8()?; // compression methods
    let mut read = ClientHello::default();
    if hello.0.is_empty() {
        return Some(read);
    }
    let mut extensions = Reader(hello.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        match kind {
            0x0010 => {
                let mut list = Reader(Reader(data).vec16()?);
                while !list.0.is_empty() {
                    read.alpn.push(list.vec8()?.to_vec());
                }
            }
            0x0000 => read.server_name = server_name(data)?,
            _ => {}
        }
    }
    Some(read)
}

/// The host_name entry of a server_name extension (RFC 6066: a list with at most one name per
/// type); `Some(None)` when it holds no DNS name a host could match.
fn server_name(data: &[u8]) -> Option<Option<String>> {
    let mut list = Reader(Reader(data).vec16()?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 {
            let name = std::str::from_utf8(name).ok().filter(|n| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            });
            return Some(name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()));
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A real ClientHello, written by rustls.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        client_hello_to("braid.mesh", alpn)
    }

    fn client_hello_to(server: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(server.to_owned()).unwrap();
        let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut bytes = Vec::new();
        connection.write_tls(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn reads_the_alpn_of_a_real_client_hello() {
        let hello = client_hello(&[b"braid/h2", b"h2"]);
        let Hello::Read(read) = parse(&hello) else { panic!("a ClientHello") };
        assert_eq!(read.alpn, vec![b"braid/h2".to_vec(), b"h2".to_vec()]);
        let Hello::Read(read) = parse(&client_hello(&[])) else { panic!("a ClientHello") };
        assert!(read.alpn.is_empty());
        assert!(matches!(parse(&hello[..hello.len() - 1]), Hello::NeedBytes(n) if n == hello.len()));
        assert_eq!(parse(&hello[..3]), Hello::NeedBytes(5));
    }

    #[test]
    fn reads_the_server_name_in_lower_case_and_none_for_an_ip() {
        let Hello::Read(read) = parse(&client_hello_to("API.Example.com", &[b"h2"])) else {
            panic!("a ClientHello")
        };
        assert_eq!(read.server_name.as_deref(), Some("api.example.com"));
        // rustls sends no SNI for an IP address.
        let Hello::Read(read) = parse(&client_hello_to("203.0.113.5", &[])) else { panic!("a ClientHello") };
        assert_eq!(read.server_name, None);
        // A name with bytes no host has is no name.
        assert_eq!(server_name(&[0, 6, 0, 0, 3, b'a', b'/', b'b']), Some(None));
        assert_eq!(server_name(&[0, 6, 0, 0, 9, b'a']), None, "a name longer than its list");
    }

    #[test]
    fn refuses_what_is_not_a_client_hello() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotHello);
        assert_eq!(parse(&[0x16, 0x03, 0x01, 0x00, 0x04, 2, 0, 0, 0]), Hello::NotHello, "a ServerHello");
        let mut truncated = client_hello(&[b"braid/h2"]);
        truncated[8] = 0xff; // the handshake claims more bytes than the record holds
        assert_eq!(parse(&truncated), Hello::NotHello);
    }
}
