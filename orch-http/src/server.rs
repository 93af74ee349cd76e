//! [`serve`]: the HTTP/1.1 server `orchd` runs the [`router`](crate::router) on, with the
//! limits a server on a network needs ([`ServerOptions`]), over plain TCP or any stream a
//! [`Handshake`] makes of it (orchd's TLS).
//!
//! `axum::serve` would do, but it is built for HTTP/1 and HTTP/2 alike: before hyper sees a
//! connection it reads the first bytes to tell the versions apart and hands them back through
//! a rewind buffer. hyper's first read then returns only those bytes, the next one finds less
//! than 8 KiB free and its read buffer doubles, so every connection kept a 16 KiB read buffer
//! for as long as it was open (heaptrack, 10,000 event streams: 160 MB of buffers). orch speaks
//! HTTP/1.1 only, so this server hands each connection to hyper's HTTP/1 connection directly:
//! no version probe, an 8 KiB read buffer.
//!
//! What a client cannot do to it:
//! - hold a connection without sending a request: the headers of each request (the first, and
//!   each next one on a kept-alive connection) must arrive within
//!   [`ServerOptions::header_read_timeout`], however slowly they trickle; a TLS handshake too;
//! - trickle a request body forever: the whole body must arrive within
//!   [`ServerOptions::request_body_timeout`];
//! - stop reading a response (an event stream it never reads): a write that makes no progress
//!   for [`ServerOptions::write_timeout`] closes the connection, and its stream with it;
//! - open connections without end: at [`ServerOptions::max_connections`] the server stops
//!   accepting until one closes (new clients wait in the listen backlog).
//!
//! Otherwise it behaves as `axum::serve(listener,
//! router.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(..)`:
//! every request carries [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo); a failed
//! `accept` for lack of file descriptors is logged and retried after a second; on shutdown no
//! connection is accepted, every open connection finishes its in-flight request and closes,
//! and [`serve`] returns once all have.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::routing::future::RouteFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::config::ConfigError;

/// The limits of the connections [`serve_with`] accepts (orchd's `server:` keys).
///
/// ```
/// use std::time::Duration;
/// use orch_http::server::ServerOptions;
///
/// let options = ServerOptions::default()
///     .with_header_read_timeout(Duration::from_secs(5))
///     .with_max_connections(1_000);
/// assert!(options.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Longest wait for the complete headers of a request, counted from the moment the
    /// connection is ready for one (accepted, or done with its previous request): so also how
    /// long an idle kept-alive connection stays open, and how long a TLS handshake may take.
    /// Default 10 s.
    pub header_read_timeout: Duration,
    /// Longest a request body may take to arrive in full. Default 60 s.
    pub request_body_timeout: Duration,
    /// Longest a write to the client may make no progress before the connection is closed (a
    /// client that stopped reading). Default 30 s.
    pub write_timeout: Duration,
    /// Connections open at once; at the limit, accepting pauses until one closes. Default
    /// 25,000 (about 30 KiB each when idle; orchd lowers it to fit its file descriptor limit).
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            header_read_timeout: Duration::from_secs(10),
            request_body_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connections: 25_000,
        }
    }
}

impl ServerOptions {
    /// Sets [`ServerOptions::header_read_timeout`].
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Sets [`ServerOptions::request_body_timeout`].
    pub fn with_request_body_timeout(mut self, timeout: Duration) -> Self {
        self.request_body_timeout = timeout;
        self
    }

    /// Sets [`ServerOptions::write_timeout`].
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Sets [`ServerOptions::max_connections`].
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Checks every limit; the error names the key as written in orchd's config file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let day = Duration::from_secs(24 * 3600);
        for (key, value) in [
            ("server.header_read_timeout", self.header_read_timeout),
            ("server.request_body_timeout", self.request_body_timeout),
            ("server.write_timeout", self.write_timeout),
        ] {
            if value.is_zero() || value > day {
                return Err(ConfigError::new(key, "must be between 1 and 86400 seconds"));
            }
        }
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Turns an accepted TCP connection into the stream HTTP is spoken over: the identity for
/// plain HTTP ([`PlainTcp`]), a TLS handshake for HTTPS (orchd's). It runs on the
/// connection's own task, within [`ServerOptions::header_read_timeout`]; an error closes the
/// connection (logged at debug level: it is the client's business).
pub trait Handshake: Send + Sync + 'static {
    /// The stream HTTP is spoken over.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Makes the stream of one connection from `remote`.
    fn handshake(
        &self,
        tcp: TcpStream,
        remote: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plain HTTP: the TCP stream as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTcp;

impl Handshake for PlainTcp {
    type Stream = TcpStream;

    async fn handshake(&self, tcp: TcpStream, _remote: SocketAddr) -> io::Result<TcpStream> {
        Ok(tcp)
    }
}

/// Serves `router` on `listener` over plain HTTP/1.1 with the default [`ServerOptions`] until
/// `shutdown` fires (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(
        listener,
        router,
        shutdown,
        ServerOptions::default(),
        PlainTcp,
    )
    .await
}

/// Serves `router` on `listener` over HTTP/1.1, each connection made by `handshake`, within
/// `options`, until `shutdown` fires; then waits for the open connections to finish their
/// in-flight requests (the caller bounds that wait). Streams that never end on their own
/// (server-sent events) must end on the application's shutdown signal; the router's do.
pub async fn serve_with<H: Handshake>(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    options: ServerOptions,
    handshake: H,
) -> io::Result<()> {
    options
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let connections = TaskTracker::new();
    let handshake = Arc::new(handshake);
    // One permit per open connection: at the limit the loop waits here, not in `accept`.
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    // Without a timer hyper never enforces its header-read timeout. The read buffer's cap
    // bounds what trickled headers can make a connection hold.
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(64 * 1024);
    let mut warned_full_at: Option<Instant> = None;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if warned_full_at.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        max_connections = options.max_connections,
                        "connection limit reached (server.max_connections); new connections wait"
                    );
                    warned_full_at = Some(Instant::now());
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                accept_failed(error).await;
                continue;
            }
        };
        let handshake = handshake.clone();
        let http = http.clone();
        let service = AppService {
            router: router.clone(),
            remote,
            body_timeout: options.request_body_timeout,
        };
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let stream = tokio::select! {
                made = tokio::time::timeout(
                    options.header_read_timeout,
                    handshake.handshake(stream, remote),
                ) => match made {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, %remote, "handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "handshake timed out");
                        return;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let io = TokioIo::new(WriteDeadline::new(stream, options.write_timeout));
            connection(http.serve_connection(io, service), shutdown).await;
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One connection until the client closes it or, after `shutdown`, its in-flight request ends.
async fn connection<S>(conn: Connection<S>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::trace!(%error, "connection ended with an error");
            }
            return;
        }
        () = shutdown.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(error) = conn.await {
        tracing::trace!(%error, "connection ended with an error");
    }
}

/// Like `axum::serve`: connection errors are the client's business; anything else (out of file
/// descriptors) is logged and retried after a second.
async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

type Connection<S> = hyper::server::conn::http1::Connection<TokioIo<WriteDeadline<S>>, AppService>;

/// A stream whose writes fail with `TimedOut` once one has made no progress for the timeout:
/// hyper then drops the connection and the response it was writing (an event stream ends, and
/// frees its slot).
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Set while a write is pending; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// After a `Pending` write: `Pending` until the deadline, then the error.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let deadline = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading (server.write_timeout)",
        )))
    }

    fn progressed<T>(&mut self, result: io::Result<T>) -> Poll<io::Result<T>> {
        self.stalled = None;
        Poll::Ready(result)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(result) => self.progressed(result),
            Poll::Pending => self.stall(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => self.progressed(result),
            Poll::Pending => self.stall(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(result) => self.progressed(result),
            Poll::Pending => self.stall(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Ready(result) => self.progressed(result),
            Poll::Pending => self.stall(cx),
        }
    }
}

/// The router as a hyper service for one connection: each request gets the peer address and
/// a body that must arrive within the body timeout.
#[derive(Clone)]
struct AppService {
    router: Router,
    remote: SocketAddr,
    body_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for AppService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ConnectInfo(self.remote));
        let body = DeadlineBody {
            inner: body,
            deadline: Instant::now() + self.body_timeout,
            timer: None,
        };
        // `Router` is always ready (its `poll_ready` returns `Ready` at once).
        self.router
            .clone()
            .call(Request::from_parts(parts, Body::new(body)))
    }
}

/// A request body that fails once its deadline passes before it has fully arrived.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Made on the first wait, so a body that is already there costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The error of a request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within server.request_body_timeout")]
pub(crate) struct BodyTimedOut;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
