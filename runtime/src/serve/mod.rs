//! `fennec serve`: a classifier behind HTTP, loaded once (feature `serve`).
//!
//! hyper (HTTP/1.1) on a one-thread tokio runtime parses requests and moves bytes;
//! the CPU work happens off that thread: images decode on a rayon pool, and one
//! inference thread runs batches gathered from all clients ([`batcher`]). Every
//! limit has a default and a flag: body size, image megapixels (the decoder's
//! [`DecodeLimits`]), images per request, requests admitted at once (beyond it: 503
//! with `Retry-After`), the time to send headers and body (slow clients are cut
//! off), and the time to answer. On shutdown (Ctrl-C or SIGTERM) the listener
//! closes first and requests in flight are finished. Routes and answers:
//! [`handler`]; counters: [`metrics`].

mod batcher;
mod handler;
mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::classifier::Classifier;
use crate::decode::DecodeLimits;
use crate::preprocess::Preprocess;

use self::batcher::Batcher;
use self::metrics::Metrics;

/// How the server listens, batches and limits. [`Default`] is what `fennec serve`
/// uses without flags.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub bind: SocketAddr,
    /// How long the first request of a batch waits for others; zero = no batching.
    pub batch_window: Duration,
    /// Most images in one inference call.
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub max_images: usize,
    pub limits: DecodeLimits,
    /// Prediction requests admitted at once (decoding, queued or inferring).
    pub max_requests: usize,
    /// Time for a client to send its headers.
    pub header_timeout: Duration,
    /// Time for a client to send its body.
    pub read_timeout: Duration,
    /// Time to score a request once its body is in.
    pub request_timeout: Duration,
    /// After Ctrl-C/SIGTERM, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
    pub decode_threads: usize,
    /// Bearer token every endpoint but /healthz requires, if any.
    pub token: Option<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            batch_window: Duration::from_millis(2),
            max_batch: 16,
            max_body_bytes: 16 << 20,
            max_images: 64,
            limits: DecodeLimits::default(),
            max_requests: 64,
            header_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            decode_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            token: None,
        }
    }
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the server: {0}")]
    Start(#[from] std::io::Error),
    #[error("cannot start decode threads: {0}")]
    DecodeThreads(#[from] rayon::ThreadPoolBuildError),
    #[error("{path}: {reason}")]
    Token { path: PathBuf, reason: String },
}

/// What every request handler shares.
struct State {
    options: ServeOptions,
    labels: Vec<String>,
    preprocess: Preprocess,
    /// `GET /v1/model`: the JSON of `fennec info --json`.
    model_json: serde_json::Value,
    metrics: Arc<Metrics>,
    admission: Arc<Semaphore>,
    batcher: Batcher,
    pool: rayon::ThreadPool,
}

/// A bound, not yet running server.
pub struct Server {
    listener: std::net::TcpListener,
    classifier: Arc<Classifier>,
    options: ServeOptions,
}

/// Counts of a finished run, for the closing line.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub connections: u64,
    /// Connections still open when the shutdown grace ran out.
    pub cut_off: bool,
}

impl Server {
    /// Binds the address (port 0 picks a free one: see [`Server::local_addr`]).
    pub fn bind(classifier: Arc<Classifier>, options: ServeOptions) -> Result<Server, ServeError> {
        let addr = options.bind;
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Server {
            listener,
            classifier,
            options,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight
    /// (at most `shutdown_grace`).
    pub fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<Summary, ServeError> {
        let Server {
            listener,
            classifier,
            options,
        } = self;
        let metrics = Arc::new(Metrics::default());
        let (batcher, infer_thread) = Batcher::start(
            classifier.clone(),
            options.batch_window,
            options.max_batch.max(1),
            metrics.clone(),
        )?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.decode_threads.max(1))
            .thread_name(|i| format!("fennec-decode-{i}"))
            .build()?;
        let state = Arc::new(State {
            labels: classifier.labels.clone(),
            preprocess: classifier.preprocess.clone(),
            model_json: json!({
                "model": classifier.info,
                "labels": classifier.labels,
                "preprocess": classifier.preprocess,
            }),
            metrics,
            admission: Arc::new(Semaphore::new(options.max_requests.max(1))),
            batcher,
            pool,
            options,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let summary = runtime.block_on(accept_loop(listener, state, shutdown))?;
        // The state (and with it the batcher's sender) is gone: the thread ends.
        drop(runtime);
        let _ = infer_thread.join();
        Ok(summary)
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, ServeError> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.options.header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let grace = state.options.shutdown_grace;
    let mut connections = 0u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors and the like: pause, keep serving.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                connections += 1;
                let state = state.clone();
                let service = service_fn(move |req| handler::handle(state.clone(), req));
                let conn = http.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    // A client that hangs up or sends garbage only ends its connection.
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let cut_off = tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err();
    Ok(Summary {
        connections,
        cut_off,
    })
}

/// Completes on Ctrl-C or (on Unix) SIGTERM, as systemd stops a service.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Reads a bearer token file: its first line, trimmed; empty is an error.
pub fn read_token(path: &std::path::Path) -> Result<String, ServeError> {
    let text = std::fs::read_to_string(path).map_err(|e| ServeError::Token {
        path: path.into(),
        reason: format!("cannot read token file: {}", crate::decode::io_reason(&e)),
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(ServeError::Token {
            path: path.into(),
            reason: "token file is empty".into(),
        });
    }
    Ok(token)
}
