//! The endpoint's OS edge: a TCP listener on `vmtun up`'s tokio runtime (beside the
//! control socket), a task per connection, and the snapshot they share.
//!
//! A scrape costs the data path what `vmtun status` costs it: one snapshot request through
//! the [`DriverHandle`], answered between two batches of packets. However often the
//! endpoint is scraped, there is at most one such request in flight and at most one per
//! 100 ms; scrapes in between get the last page. Connections beyond [`MAX_CONNECTIONS`]
//! are closed at once, each is served by a task of its own, and a client that does not
//! finish its request within 5 s is dropped, so no client can hold anything up.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinHandle;

use super::exposition::{self, CONTENT_TYPE};
use super::http::{self, Code, Route};
use crate::driver::DriverHandle;
use crate::status::{Reply, Request, Status};

/// How `vmtun up` serves: scrapes closer together than 100 ms share one snapshot, so a
/// flood of scrapes cannot turn into a flood of requests to the data path (Prometheus
/// scrapes every 15 s or so); a client has 5 s to send its request and 5 s to take the
/// answer.
const LIMITS: Limits = Limits {
    min_snapshot_interval: Duration::from_millis(100),
    client_timeout: Duration::from_secs(5),
};
/// Connections served at once; more are closed unanswered.
pub const MAX_CONNECTIONS: usize = 16;

/// The endpoint's address could not be bound. One line: the kernel's reason is in the
/// message, not a source error that `{:#}` would print a second time.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen: cannot listen on {addr}: {cause}{}", bind_hint(cause))]
pub struct BindError {
    addr: SocketAddr,
    cause: io::Error,
}

fn bind_hint(cause: &io::Error) -> &'static str {
    match cause.kind() {
        io::ErrorKind::AddrInUse => {
            "; stop what uses that port, or choose another one in [metrics] listen"
        }
        io::ErrorKind::AddrNotAvailable => {
            "; no interface of this host has that address: choose one it has in [metrics] listen"
        }
        _ => "",
    }
}

/// Binds the endpoint's address. `vmtun up` calls it before it changes the host, so that a
/// port in use is refused as early as the UDP port.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let bound = std::net::TcpListener::bind(addr).and_then(|listener| {
        listener.set_nonblocking(true)?;
        Ok(listener)
    });
    bound.map_err(|cause| BindError { addr, cause })
}

/// Serves the metrics of the running instance behind `driver` on `listener` (from
/// [`bind`]) until the returned task is aborted. Call within the tokio runtime.
pub fn serve(listener: std::net::TcpListener, driver: DriverHandle) -> io::Result<JoinHandle<()>> {
    serve_with(listener, LIMITS, move || {
        let driver = driver.clone();
        async move {
            match driver.request(Request::Status).await {
                Some(Reply::Ok(Some(status))) => Some(*status),
                _ => None,
            }
        }
    })
}

/// The timing of [`serve`].
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Scrapes closer together share one snapshot.
    min_snapshot_interval: Duration,
    /// How long a client may take to send its request, and to take the answer.
    client_timeout: Duration,
}

/// [`serve`] with the snapshot source and limits given: `snapshot` yields the instance's
/// status, `None` once it is stopping.
fn serve_with<F, Fut>(
    listener: std::net::TcpListener,
    limits: Limits,
    snapshot: F,
) -> io::Result<JoinHandle<()>>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Status>> + Send,
{
    let listener = TcpListener::from_std(listener)?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("metrics on http://{addr}{}", http::METRICS_PATH);
    }
    let pages = Arc::new(Pages {
        snapshot,
        limits,
        last: Mutex::new(None),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    // Over the limit, the connection is dropped here: closed unanswered.
                    if let Ok(slot) = slots.clone().try_acquire_owned() {
                        let pages = pages.clone();
                        tokio::spawn(async move {
                            answer(stream, &pages).await;
                            drop(slot);
                        });
                    }
                }
                Err(e) => {
                    // Out of file descriptors, say: try again shortly rather than spin.
                    tracing::warn!("metrics: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

/// The last rendered page, and where fresh ones come from.
struct Pages<F> {
    snapshot: F,
    limits: Limits,
    last: Mutex<Option<(Instant, Arc<str>)>>,
}

impl<F, Fut> Pages<F>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<Status>>,
{
    /// The page to serve now: the last one if it is recent enough, else a fresh one. The
    /// lock is held while a snapshot is awaited, so there is one request at a time.
    async fn current(&self) -> Result<Arc<str>, Code> {
        let mut last = self.last.lock().await;
        if let Some((at, page)) = last.as_ref()
            && at.elapsed() < self.limits.min_snapshot_interval
        {
            return Ok(page.clone());
        }
        let status = (self.snapshot)().await.ok_or(Code::Unavailable)?;
        let page: Arc<str> = exposition::render(status, SystemTime::now())
            .map_err(|_| Code::InternalError)?
            .into();
        *last = Some((Instant::now(), page.clone()));
        Ok(page)
    }
}

async fn answer<F, Fut>(mut stream: TcpStream, pages: &Pages<F>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<Status>>,
{
    let timeout = pages.limits.client_timeout;
    let reply = match tokio::time::timeout(timeout, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => match http::route(&head) {
            Route::Metrics { head_only } => match pages.current().await {
                Ok(page) => http::response(Code::Ok, CONTENT_TYPE, &page, head_only),
                Err(code) => http::refusal(code),
            },
            Route::NotFound => http::refusal(Code::NotFound),
            Route::MethodNotAllowed => http::refusal(Code::MethodNotAllowed),
            Route::BadRequest => http::refusal(Code::BadRequest),
        },
        Ok(Ok(None)) => http::refusal(Code::HeadTooLarge),
        // Too slow, or gone: nobody to answer.
        Ok(Err(_)) | Err(_) => return,
    };
    if let Ok(Ok(())) = tokio::time::timeout(timeout, stream.write_all(&reply)).await {
        let _ = stream.shutdown().await;
    }
}

/// Reads up to the end of the request head; `None` if it grows past [`http::MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = http::head_end(&head) {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() > http::MAX_HEAD {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::BusyPollStatus;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn status() -> Status {
        Status {
            interface: "vmtun0".into(),
            public_key: "HW8IEmprqYyqCzMIhqX68QZNvZPNZDAj88CdO6RD0l4=".into(),
            listen_port: 51820,
            peers: Vec::new(),
            drops: Default::default(),
            busy_poll: BusyPollStatus {
                window_us: 200,
                spun_ms: 0.0,
                caught: 0,
                over_budget: 0,
            },
            restore: None,
            migration: None,
        }
    }

    /// Far longer than any test runs.
    const FOREVER: Duration = Duration::from_secs(3600);

    /// Serves on an unused loopback port with a client timeout of [`FOREVER`]; `available`
    /// says whether snapshots come. Returns the address and how many snapshots were taken.
    fn start(min_interval: Duration, available: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = taken.clone();
        let limits = Limits {
            min_snapshot_interval: min_interval,
            client_timeout: FOREVER,
        };
        serve_with(listener, limits, move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { available.then(status) }
        })
        .unwrap();
        (addr, taken)
    }

    /// Sends `request` and reads the whole answer.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    const SCRAPE: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: vmtun\r\n\r\n";

    #[tokio::test]
    async fn scrapes_close_together_share_one_snapshot() {
        let (addr, taken) = start(FOREVER, true);
        let first = exchange(addr, SCRAPE).await;
        let second = exchange(addr, SCRAPE).await;
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        assert!(
            first.contains(&format!("\r\nContent-Type: {CONTENT_TYPE}\r\n")),
            "{first}"
        );
        assert!(first.contains("\nvmtun_info{"), "{first}");
        assert_eq!(first, second);
        assert_eq!(taken.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn each_scrape_after_the_interval_takes_a_snapshot() {
        let (addr, taken) = start(Duration::ZERO, true);
        exchange(addr, SCRAPE).await;
        exchange(addr, SCRAPE).await;
        assert_eq!(taken.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn other_requests_are_refused_without_a_snapshot() {
        let (addr, taken) = start(Duration::ZERO, true);
        let cases: [(&[u8], &str); 4] = [
            (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found\r\n"),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed\r\n",
            ),
            (b"hello\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n"),
            (&[b'x'; http::MAX_HEAD + 1], "HTTP/1.1 431 "),
        ];
        for (request, expected) in cases {
            let answer = exchange(addr, request).await;
            assert!(answer.starts_with(expected), "{answer}");
        }
        assert_eq!(taken.load(Ordering::SeqCst), 0);
        let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD got a body: {head}");
    }

    #[tokio::test]
    async fn a_stopping_instance_answers_503() {
        let (addr, _) = start(Duration::ZERO, false);
        let answer = exchange(addr, SCRAPE).await;
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    }

    /// The silent clients are never timed out here: the scrape is answered only if it does
    /// not wait behind them (a generous ceiling, not a timing).
    #[tokio::test]
    async fn a_silent_client_does_not_hold_up_a_scrape() {
        let (addr, _) = start(Duration::ZERO, true);
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), exchange(addr, SCRAPE))
            .await
            .expect("the scrape waited behind a silent client");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    }

    #[test]
    fn a_port_in_use_is_one_line_naming_the_field() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = taken.local_addr().unwrap();
        // As `main` prints it, with every cause.
        let e = format!("{:#}", anyhow::Error::from(bind(addr).unwrap_err()));
        assert!(
            e.starts_with(&format!("metrics.listen: cannot listen on {addr}: ")),
            "{e}"
        );
        assert!(e.ends_with("choose another one in [metrics] listen"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
