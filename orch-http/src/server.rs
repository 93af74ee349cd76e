//! [`serve`]: the HTTP/1.1 server `orchd` runs the [`router`](crate::router) on.
//!
//! `axum::serve` would do, but it is built for HTTP/1 and HTTP/2 alike: before hyper sees a
//! connection it reads the first bytes to tell the versions apart and hands them back through
//! a rewind buffer. hyper's first read then returns only those bytes, the next one finds less
//! than 8 KiB free and its read buffer doubles, so every connection kept a 16 KiB read buffer
//! for as long as it was open (heaptrack, 10,000 event streams: 160 MB of buffers). orch speaks
//! HTTP/1.1 only, so this server hands each connection to hyper's HTTP/1 connection directly:
//! no version probe, an 8 KiB read buffer.
//!
//! Behaviour matches `axum::serve(listener, router.into_make_service_with_connect_info::<
//! SocketAddr>()).with_graceful_shutdown(..)`: every request carries
//! [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo); a failed `accept` for lack of file
//! descriptors is logged and retried after a second; on shutdown no connection is accepted,
//! every open connection finishes its in-flight request and closes, and [`serve`] returns once
//! all have.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::routing::future::RouteFuture;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// Serves `router` on `listener` over HTTP/1.1 until `shutdown` fires, then waits for the open
/// connections to finish their in-flight requests (the caller bounds that wait). Streams that
/// never end on their own (server-sent events) must end on the application's shutdown signal;
/// the router's do.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let connections = TaskTracker::new();
    // hyper's defaults, as under `axum::serve`: keep-alive on, no header-read timeout (no timer
    // is set), no upgrades (no route needs one).
    let http = hyper::server::conn::http1::Builder::new();
    loop {
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
        // Built here so the connection task does not carry the builder for its lifetime.
        let conn = http.serve_connection(
            TokioIo::new(stream),
            AppService {
                router: router.clone(),
                remote,
            },
        );
        connections.spawn(connection(conn, shutdown.clone()));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One connection until the client closes it or, after `shutdown`, its in-flight request ends.
async fn connection(conn: Connection, shutdown: CancellationToken) {
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

type Connection = hyper::server::conn::http1::Connection<TokioIo<TcpStream>, AppService>;

/// The router as a hyper service for one connection: each request gets the peer address.
#[derive(Clone)]
struct AppService {
    router: Router,
    remote: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for AppService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.remote));
        // `Router` is always ready (its `poll_ready` returns `Ready` at once).
        self.router.clone().call(request)
    }
}
