//! A recorded API server behind kube-rs's own mock transport (`tower-test` behind
//! `kube::Client`), for the watches' tests: it answers LISTs with the responses
//! given for each path, in order, and holds WATCH streams open, feeding each the
//! events given for its path, and answers other calls (`POST`, a `GET` of one
//! object, `PATCH`, `DELETE`) from the responses given for the method and path,
//! in order. A response that is a `Status` object carries its `code` as the
//! HTTP status, as the API server sends it.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use kube::Client;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

type Chunk = Result<Frame<Bytes>, std::io::Error>;
type MockBody = StreamBody<ReceiverStream<Chunk>>;

/// What the mock server was asked, as request URIs in arrival order.
pub(crate) struct ApiServer {
    /// Every request's URI (path and query); calls other than LIST and WATCH as
    /// `METHOD uri body`.
    pub(crate) requests: mpsc::UnboundedReceiver<String>,
}

/// Responses to calls other than LIST and WATCH, by `(method, path)`.
pub(crate) type Calls = BTreeMap<(&'static str, String), Vec<Value>>;

impl ApiServer {
    /// The requests made so far.
    pub(crate) fn seen(&mut self) -> Vec<String> {
        let mut uris = Vec::new();
        while let Ok(uri) = self.requests.try_recv() {
            uris.push(uri);
        }
        uris
    }
}

/// A list response (`kind` is e.g. `PodList`).
pub(crate) fn list(api_version: &str, kind: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv}, "items": items})
}

/// The API server's `Status` for an error.
pub(crate) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "code": code, "message": message})
}

/// Serves `lists` (per path, one response per LIST, the last one repeated) and
/// `watches` (per path, one event list per WATCH, held open after its events
/// unless the list ends with `"drop"`; later watches stay open and quiet). Paths not given answer 404 `NotFound`, as for a resource whose CRD is
/// not installed.
pub(crate) fn api_server(
    lists: BTreeMap<&'static str, Vec<Value>>,
    watches: BTreeMap<&'static str, Vec<Vec<Value>>>,
) -> (Client, ApiServer) {
    api_server_with(lists, watches, Calls::new())
}

/// [`api_server`], also answering `calls`.
pub(crate) fn api_server_with(
    lists: BTreeMap<&'static str, Vec<Value>>,
    mut watches: BTreeMap<&'static str, Vec<Vec<Value>>>,
    mut calls: Calls,
) -> (Client, ApiServer) {
    let (service, mut handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let (seen, requests) = mpsc::unbounded_channel();
    let mut lists: BTreeMap<String, Vec<Value>> =
        lists.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    tokio::spawn(async move {
        // Open watch bodies stay alive here until the test ends.
        let mut open = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let uri = req.uri().to_string();
            let path = req.uri().path().to_string();
            let not_found = || {
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            };
            let method = req.method().as_str().to_string();
            if let Some(responses) = calls
                .iter_mut()
                .find(|((m, p), _)| *m == method && *p == path)
                .map(|(_, r)| r)
            {
                let body = http_body_util::BodyExt::collect(req.into_body())
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                    .unwrap_or_default();
                let _ = seen.send(format!("{method} {uri} {body}"));
                let response = if responses.len() > 1 {
                    responses.remove(0)
                } else {
                    responses.first().cloned().unwrap_or_else(not_found)
                };
                send.send_response(respond(&response));
                continue;
            }
            if method == "GET" {
                let _ = seen.send(uri.clone());
            } else {
                let _ = seen.send(format!("{method} {uri}"));
            }
            if method != "GET" || !lists.contains_key(&path) {
                send.send_response(respond(&not_found()));
                continue;
            }
            if uri.contains("watch=true") {
                let events = watches
                    .get_mut(path.as_str())
                    .filter(|w| !w.is_empty())
                    .map(|w| w.remove(0));
                let (tx, rx) = mpsc::channel(64);
                let mut dropped = false;
                for e in events.unwrap_or_default() {
                    // `"drop"` ends the stream here: a connection the server closed.
                    if e == "drop" {
                        dropped = true;
                        break;
                    }
                    let _ = tx.try_send(Ok(Frame::data(Bytes::from(format!("{e}\n")))));
                }
                if !dropped {
                    open.push(tx);
                }
                send.send_response(Response::new(StreamBody::new(ReceiverStream::new(rx))));
            } else {
                let responses = lists.get_mut(&path).filter(|l| !l.is_empty());
                let body = match responses {
                    Some(l) if l.len() > 1 => l.remove(0),
                    Some(l) => l[0].clone(),
                    None => not_found(),
                };
                send.send_response(respond(&body));
            }
        }
    });
    (Client::new(service, "default"), ApiServer { requests })
}

/// A complete response with `body`, its status from a `Status` body's `code`.
fn respond(body: &Value) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Ok(Frame::data(Bytes::from(format!("{body}\n")))));
    let mut response = Response::new(StreamBody::new(ReceiverStream::new(rx)));
    if body["kind"] == "Status" {
        let code = body["code"].as_u64().and_then(|c| u16::try_from(c).ok());
        if let Some(code) = code.and_then(|c| StatusCode::from_u16(c).ok()) {
            *response.status_mut() = code;
        }
    }
    response
}
