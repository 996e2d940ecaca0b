//! The HTTP/1 server loop: accepts connections, serves the router on each with hyper, and
//! stops gracefully.
//!
//! `axum::serve` would do, but offers no header-read timeout and no header size cap, so a
//! client could hold connections open by sending headers slowly (or never). This loop is the
//! same shape (hyper's HTTP/1 connection with upgrades, one task per connection), with those
//! limits set, and it hands each request the peer's address (`ConnectInfo`) for the
//! trusted-proxy logic in [`crate::client`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

/// How long a client has to send a request's headers, counted from when the connection is
/// ready for the next request: it closes half-open and idle keep-alive connections alike.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a request's head (request line and headers) may take.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves `router` on `listener` until `stop` is cancelled, then stops accepting, asks every
/// open HTTP connection to finish its request in flight, and waits for them. Upgraded
/// WebSocket connections are not waited for here: the socket tasks drain them.
///
/// # Errors
/// Never in practice: failed accepts are logged and retried.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Frames are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = router.clone().oneshot(request.map(Body::new));
            async move { Ok::<_, Infallible>(response.await.unwrap_or_else(|never| match never {})) }
        });
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The peer address of a request served by [`serve`]; `0.0.0.0:0` for requests that did not
/// come through it (router tests).
pub fn peer_addr(parts: &axum::http::request::Parts) -> SocketAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |info| info.0)
}
