//! The small HTTP/1.1 server the three endpoints share: bind like Go's `net.Listen("tcp", …)`,
//! answer every request with a synchronous handler, and close the port for good when asked.

use std::convert::Infallible;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// What a handler answers.
pub(crate) type Reply = Response<Full<Bytes>>;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A running HTTP server on one listening socket.
///
/// The port is open for as long as this value lives: [`HttpServer::shutdown`] closes it and
/// returns once the socket is closed; dropping the value closes it too, a moment later (the
/// serving task is aborted). Connections in progress are cut either way.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// The address the socket is bound to (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and closes the listening socket and every open connection; returns once
    /// the port is closed.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds a listening TCP socket the way Go's `net.Listen("tcp", addr)` does, since that is
/// what kube-proxy's servers use: an unspecified address (`0.0.0.0` or `::`) gives one
/// dual-stack socket on `[::]` that accepts IPv4 and IPv6 (falling back to `0.0.0.0` for an
/// IPv4 address on a host without IPv6); `SO_REUSEADDR` is set. Must run inside a Tokio
/// runtime (an error otherwise).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other("binding a listener needs a Tokio runtime"));
    }
    if addr.ip().is_unspecified() {
        let any6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), addr.port());
        match bind_socket(any6, Some(false)) {
            Ok(listener) => return Ok(listener),
            Err(e) if addr.is_ipv4() && no_ipv6(&e) => {}
            Err(e) => return Err(e),
        }
    }
    bind_socket(addr, None)
}

fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

fn bind_socket(addr: SocketAddr, only_v6: Option<bool>) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(only_v6) = only_v6 {
        socket.set_only_v6(only_v6)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Serves HTTP/1.1 on `listener`, answering each request with `handler`.
pub(crate) fn spawn<H>(listener: TcpListener, handler: H) -> io::Result<HttpServer>
where
    H: Fn(&Request<Incoming>) -> Reply + Send + Sync + 'static,
{
    let local_addr = listener.local_addr()?;
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        // Owned by this task: aborting the task drops the set, which aborts every connection.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        let handler = handler.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |request: Request<Incoming>| {
                                let reply = handler(&request);
                                async move { Ok::<_, Infallible>(reply) }
                            });
                            let _ = http1::Builder::new()
                                .timer(TokioTimer::new())
                                .header_read_timeout(HEADER_READ_TIMEOUT)
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::debug!("accept on {local_addr}: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok(HttpServer {
        local_addr,
        task: Some(task),
    })
}

/// A response with the given status, headers and body.
pub(crate) fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    let mut builder =
        Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Go's `http.ServeMux` answer for a path nothing is registered on.
pub(crate) fn not_found() -> Reply {
    reply(
        404,
        &[
            ("Content-Type", "text/plain; charset=utf-8"),
            ("X-Content-Type-Options", "nosniff"),
        ],
        "404 page not found\n",
    )
}
