//! The simplest relay that can be written here, one of the two floors of the pair benchmark:
//! for each accepted connection one connection upstream, and one blocking thread per direction
//! moving bytes with splice(2) through a pipe, so they never enter user space. No event loop, no
//! buffer, no parsing: a thread sleeps in the kernel until its socket has data and wakes
//! straight into the copy. It has the lowest CPU and p50 per request of any two hops measured
//! here; its threads' wake-ups cost it the tail and throughput that HAProxy's event loop keeps
//! (docs/benchmarks.md, "The floor of this machine").

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;

use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};

/// What one splice moves at most: a default pipe's capacity.
const CHUNK: usize = 64 * 1024;

/// Accepts on `listen` and relays each connection to `upstream` until the process ends.
pub fn serve(listen: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    tracing::info!(%listen, %upstream, "relaying");
    for client in listener.incoming() {
        let client = match client {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                continue;
            }
        };
        if let Err(err) = relay(client, upstream) {
            tracing::warn!(%err, "a connection could not be relayed");
        }
    }
    Ok(())
}

fn relay(client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_in, server_in) = (client.try_clone()?, server.try_clone()?);
    thread::Builder::new().name("up".into()).spawn(move || pump(&client_in, &server))?;
    thread::Builder::new().name("down".into()).spawn(move || pump(&server_in, &client))?;
    Ok(())
}

/// Moves `from`'s bytes to `to` until `from` ends, then ends `to`'s writing side, as a TCP relay
/// passes a half-close on.
fn pump(from: &TcpStream, to: &TcpStream) {
    if let Err(err) = copy(from, to) {
        tracing::debug!(%err, "relay direction ended");
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

fn copy(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let (pipe_out, pipe_in) = pipe_with(PipeFlags::CLOEXEC)?;
    loop {
        let moved = splice(from, None, &pipe_in, None, CHUNK, SpliceFlags::MOVE)?;
        if moved == 0 {
            return Ok(());
        }
        let mut left = moved;
        while left > 0 {
            let out = splice(&pipe_out, None, to, None, left, SpliceFlags::MOVE)?;
            if out == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "the upstream stopped taking bytes"));
            }
            left -= out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn free_port() -> io::Result<SocketAddr> {
        TcpListener::bind("127.0.0.1:0")?.local_addr()
    }

    /// A connection to the relay once its thread listens; an error after 5 s.
    fn connect_when_up(relay: SocketAddr) -> io::Result<TcpStream> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match TcpStream::connect(relay) {
                Ok(client) => return Ok(client),
                Err(e) if std::time::Instant::now() > deadline => return Err(e),
                Err(_) => thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }

    #[test]
    fn bytes_go_both_ways_unchanged_and_a_half_close_passes_through() -> io::Result<()> {
        let origin = TcpListener::bind("127.0.0.1:0")?;
        let origin_addr = origin.local_addr()?;
        let listen = free_port()?;
        thread::spawn(move || serve(listen, origin_addr));
        let echo = thread::spawn(move || -> io::Result<Vec<u8>> {
            let (mut conn, _) = origin.accept()?;
            let mut got = Vec::new();
            conn.read_to_end(&mut got)?;
            conn.write_all(&got)?;
            Ok(got)
        });
        let mut client = connect_when_up(listen)?;
        // More than a pipe holds, so the copy loops.
        let body: Vec<u8> = (0..300_000_u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&body)?;
        client.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        client.read_to_end(&mut back)?;
        let received = echo.join().map_err(|_| io::Error::other("origin panicked"))??;
        assert_eq!(received, body, "the origin got every byte, then the end");
        assert_eq!(back, body, "and the answer came back whole");
        Ok(())
    }

    #[test]
    fn an_upstream_that_refuses_closes_the_client_and_the_relay_goes_on() -> io::Result<()> {
        let nobody = free_port()?;
        let listen = free_port()?;
        thread::spawn(move || serve(listen, nobody));
        for _ in 0..2 {
            let mut client = connect_when_up(listen)?;
            let mut rest = Vec::new();
            assert_eq!(client.read_to_end(&mut rest).unwrap_or(0), 0, "closed without a byte");
        }
        Ok(())
    }
}
