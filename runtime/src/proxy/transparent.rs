//! Transparent sockets: the listener the datapath assigns redirected connections
//! to, and the upstream connection that leaves with the client's address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

fn new_socket(ip: IpAddr) -> io::Result<Socket> {
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    // Transparent: accept connections to, and bind to, addresses that are not
    // this host's (the original destination; the client's address upstream).
    if ip.is_ipv4() {
        socket.set_ip_transparent_v4(true)?;
    } else {
        socket.set_only_v6(true)?;
        socket.set_ip_transparent_v6(true)?;
    }
    Ok(socket)
}

/// A transparent listener on `addr` (an unspecified address and the proxy port).
pub fn listener(addr: SocketAddr, backlog: i32) -> io::Result<tokio::net::TcpListener> {
    let socket = new_socket(addr.ip())?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(backlog)?;
    tokio::net::TcpListener::from_std(std::net::TcpListener::from(socket))
}

/// Connects to `server` from `client_ip` (a port the kernel picks) with `mark`
/// on every packet, so the datapath knows the connection as the proxy's.
pub async fn connect_upstream(
    client_ip: IpAddr,
    server: SocketAddr,
    mark: u32,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = new_socket(client_ip)?;
    socket.set_mark(mark)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&SockAddr::from(SocketAddr::new(client_ip, 0)))?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    match tokio::time::timeout(timeout, socket.connect(server)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {server} took longer than {timeout:?}"),
        )),
    }
}

/// Closes with a reset (linger 0) instead of a FIN.
pub fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
