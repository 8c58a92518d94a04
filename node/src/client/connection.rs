//! How the CLI reaches a node: HTTP over TCP (`http://HOST:PORT`, reqwest) or over the node's
//! admin Unix socket (`unix:/path/admin.sock`, hyper), with the same requests and answers.
//!
//! `Connection` reaches a node over TCP (reqwest) or its admin socket (`unix:PATH`; hyper's
//! HTTP/1.1 client on a `UnixStream`, since reqwest has no Unix sockets), with the same headers;
//! `Reply` reads the body as it arrives (`chunk`) or whole.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};

use super::CliError;

/// How long the CLI waits to connect to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where requests go, and the headers every one carries.
pub struct Connection {
    route: Route,
    headers: HeaderMap,
    /// `http://...` or `unix:...`, for messages.
    pub base: String,
}

enum Route {
    Tcp(reqwest::Client),
    Unix { path: PathBuf, timeout: Duration },
}

/// An answer whose body is read as it arrives.
pub struct Reply {
    pub status: StatusCode,
    body: Body,
}

enum Body {
    Tcp(reqwest::Response),
    Unix(hyper::body::Incoming),
}

impl Connection {
    /// A connection to `node` (`http://HOST:PORT` or `unix:PATH`); a request may take `timeout`.
    pub fn open(node: &str, headers: HeaderMap, timeout: Duration) -> Result<Connection, CliError> {
        if let Some(path) = node.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(CliError::Usage("--node unix:PATH needs the socket's path".into()));
            }
            let route = Route::Unix { path: PathBuf::from(path), timeout };
            return Ok(Connection { route, headers, base: node.to_owned() });
        }
        let base = node.trim_end_matches('/').to_owned();
        let valid = base.strip_prefix("http://").is_some_and(|rest| !rest.is_empty());
        if !valid || reqwest::Url::parse(&base).is_err() {
            return Err(CliError::Usage(format!(
                "--node must be an http:// URL like http://127.0.0.1:7401, or unix:PATH for a node's admin socket, \
                 got {node:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| CliError::Failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(Connection { route: Route::Tcp(http), headers, base })
    }

    /// Adds a header to every request.
    pub fn add_header(&mut self, name: header::HeaderName, value: header::HeaderValue) {
        self.headers.insert(name, value);
    }

    /// Whether requests go over the admin socket (which needs no token).
    pub fn is_socket(&self) -> bool {
        matches!(self.route, Route::Unix { .. })
    }

    /// Sends `method path_and_query` with an optional JSON body.
    pub async fn send(&self, method: Method, path_and_query: &str, json: Option<Vec<u8>>) -> Result<Reply, CliError> {
        let unreachable = |error: &dyn std::fmt::Display| {
            CliError::Unreachable(format!("could not reach node at {}: {error}", self.base))
        };
        match &self.route {
            Route::Tcp(http) => {
                let mut request =
                    http.request(method, format!("{}{path_and_query}", self.base)).headers(self.headers.clone());
                if let Some(json) = json {
                    request = request.header(header::CONTENT_TYPE, "application/json").body(json);
                }
                let response = request.send().await.map_err(|e| unreachable(&root_cause(&e)))?;
                Ok(Reply { status: response.status(), body: Body::Tcp(response) })
            }
            Route::Unix { path, timeout } => {
                let exchange = async {
                    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                        .await
                        .map_err(|_| unreachable(&"no answer within 3 s"))?
                        .map_err(|e| unreachable(&e))?;
                    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| unreachable(&e))?;
                    tokio::spawn(connection);
                    let mut request = hyper::Request::builder().method(method).uri(path_and_query);
                    for (name, value) in &self.headers {
                        request = request.header(name, value);
                    }
                    request = request.header(header::HOST, "localhost");
                    if json.is_some() {
                        request = request.header(header::CONTENT_TYPE, "application/json");
                    }
                    let request = request
                        .body(Full::new(Bytes::from(json.unwrap_or_default())))
                        .map_err(|e| CliError::Failed(format!("cannot build the request: {e}")))?;
                    sender.send_request(request).await.map_err(|e| unreachable(&e))
                };
                let response =
                    tokio::time::timeout(*timeout, exchange).await.map_err(|_| unreachable(&"no answer in time"))??;
                let (parts, body) = response.into_parts();
                Ok(Reply { status: parts.status, body: Body::Unix(body) })
            }
        }
    }
}

impl Reply {
    /// The next piece of the body, or `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, CliError> {
        let stopped = |e: &dyn std::fmt::Display| CliError::Unreachable(format!("the node stopped answering: {e}"));
        match &mut self.body {
            Body::Tcp(response) => response.chunk().await.map_err(|e| stopped(&e)),
            Body::Unix(body) => loop {
                match body.frame().await {
                    None => return Ok(None),
                    Some(Err(error)) => return Err(stopped(&error)),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Ok(Some(data));
                        }
                    }
                }
            },
        }
    }

    /// The whole body as text.
    pub async fn text(mut self) -> Result<String, CliError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            bytes.extend_from_slice(&chunk);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
