//! The fake Kubernetes API server: a small HTTP/1.1 server on 127.0.0.1 that speaks the
//! list/watch protocol at the real paths of the six collections. Lists answer
//! `{"kind":"PodList",…,"items":[…]}` with a resourceVersion; watches answer a chunked
//! stream of one `{"type":…,"object":…}` event per line, fed by the test; either can be
//! answered with a `Status` and an error code instead. Every request is recorded so tests
//! can assert on what the watchers asked for.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daemon::kube::KubeSource;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The node the agent under test runs on.
pub const NODE: &str = "node-a";
/// The bearer token in the kubeconfig.
pub const TOKEN: &str = "sluice-test-token";
/// A bound against hanging, not a performance assertion.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// The six collections the agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Res {
    Namespaces,
    Pods,
    Services,
    EndpointSlices,
    NetworkPolicies,
    Nodes,
}

impl Res {
    pub const ALL: [Res; 6] = [
        Res::Namespaces,
        Res::Pods,
        Res::Services,
        Res::EndpointSlices,
        Res::NetworkPolicies,
        Res::Nodes,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Res::Namespaces => "/api/v1/namespaces",
            Res::Pods => "/api/v1/pods",
            Res::Services => "/api/v1/services",
            Res::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
            Res::NetworkPolicies => "/apis/networking.k8s.io/v1/networkpolicies",
            Res::Nodes => "/api/v1/nodes",
        }
    }

    pub fn list_kind(self) -> &'static str {
        match self {
            Res::Namespaces => "NamespaceList",
            Res::Pods => "PodList",
            Res::Services => "ServiceList",
            Res::EndpointSlices => "EndpointSliceList",
            Res::NetworkPolicies => "NetworkPolicyList",
            Res::Nodes => "NodeList",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Res::Namespaces | Res::Pods | Res::Services | Res::Nodes => "v1",
            Res::EndpointSlices => "discovery.k8s.io/v1",
            Res::NetworkPolicies => "networking.k8s.io/v1",
        }
    }

    pub fn from_path(path: &str) -> Option<Res> {
        Res::ALL.into_iter().find(|r| r.path() == path)
    }
}

/// One request the fake API server received.
#[derive(Debug, Clone)]
pub struct Request {
    pub watch: bool,
    /// The raw query string, as sent (percent-encoded).
    pub query: String,
    /// The query's parameters, values as sent (percent-encoded).
    pub params: BTreeMap<String, String>,
    pub authorization: Option<String>,
    /// The HTTP status it was answered with.
    pub status: u16,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// What a watch stream is sent next.
#[derive(Debug)]
enum Chunk {
    /// One event, written as one line.
    Event(Value),
    /// The end of the response (the API server's watch timeout).
    End,
}

/// One collection as the fake API server holds it.
struct Served {
    items: Vec<Value>,
    resource_version: String,
    /// Errors to answer the next lists with, in order, before serving `items` again.
    list_errors: VecDeque<(u16, Value)>,
    /// Errors to answer the next watches with, in order.
    watch_errors: VecDeque<(u16, Value)>,
    requests: Vec<Request>,
    /// The events for watch streams: one stream at a time holds the lock.
    events: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Chunk>>>,
}

type Shared = Arc<Mutex<BTreeMap<Res, Served>>>;

/// A fake API server and a kubeconfig pointing at it.
pub struct FakeApi {
    shared: Shared,
    senders: BTreeMap<Res, mpsc::UnboundedSender<Chunk>>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    server: JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeApi {
    /// Serves every collection empty at resourceVersion 100 except those in `initial`.
    pub async fn start(initial: Vec<(Res, Vec<Value>)>) -> FakeApi {
        let mut initial: BTreeMap<Res, Vec<Value>> = initial.into_iter().collect();
        let mut served = BTreeMap::new();
        let mut senders = BTreeMap::new();
        for res in Res::ALL {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.insert(res, tx);
            served.insert(
                res,
                Served {
                    items: initial.remove(&res).unwrap_or_default(),
                    resource_version: "100".to_owned(),
                    list_errors: VecDeque::new(),
                    watch_errors: VecDeque::new(),
                    requests: Vec::new(),
                    events: Arc::new(tokio::sync::Mutex::new(rx)),
                },
            );
        }
        let shared: Shared = Arc::new(Mutex::new(served));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let server = tokio::spawn(serve(listener, Arc::clone(&shared)));
        let (dir, kubeconfig) = write_kubeconfig(port);
        FakeApi {
            shared,
            senders,
            kubeconfig,
            _dir: dir,
            server,
        }
    }

    pub fn source(&self) -> KubeSource {
        KubeSource {
            kubeconfig: Some(self.kubeconfig.clone()),
            node_name: NODE.to_owned(),
            sync_timeout: DEADLINE,
        }
    }

    /// Replaces what the next lists of `res` return.
    pub fn set_list(&self, res: Res, items: Vec<Value>, resource_version: &str) {
        let mut shared = self.shared.lock().expect("lock");
        let served = shared.get_mut(&res).expect("resource");
        served.items = items;
        served.resource_version = resource_version.to_owned();
    }

    pub fn fail_next_lists(&self, res: Res, times: usize, code: u16, status: Value) {
        let mut shared = self.shared.lock().expect("lock");
        let errors = &mut shared.get_mut(&res).expect("resource").list_errors;
        errors.extend(std::iter::repeat_n((code, status), times));
    }

    pub fn fail_next_watch(&self, res: Res, code: u16, status: Value) {
        let mut shared = self.shared.lock().expect("lock");
        let served = shared.get_mut(&res).expect("resource");
        served.watch_errors.push_back((code, status));
    }

    /// Sends one event on the watch stream of `res`.
    pub fn send(&self, res: Res, kind: &str, object: Value) {
        let event = json!({"type": kind, "object": object});
        self.senders[&res]
            .send(Chunk::Event(event))
            .expect("server alive");
    }

    /// Ends the current watch response of `res`.
    pub fn end_watch(&self, res: Res) {
        self.senders[&res].send(Chunk::End).expect("server alive");
    }

    pub fn requests(&self, res: Res) -> Vec<Request> {
        self.shared.lock().expect("lock")[&res].requests.clone()
    }

    pub fn lists(&self, res: Res) -> Vec<Request> {
        self.requests(res)
            .into_iter()
            .filter(|r| !r.watch)
            .collect()
    }

    pub fn watches(&self, res: Res) -> Vec<Request> {
        self.requests(res).into_iter().filter(|r| r.watch).collect()
    }

    /// Waits until `res` has received `n` watch requests; returns them.
    pub async fn wait_watches(&self, res: Res, n: usize) -> Vec<Request> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let watches = self.watches(res);
            if watches.len() >= n {
                return watches;
            }
            assert!(
                Instant::now() < deadline,
                "{res:?}: {} watch requests within {DEADLINE:?}, wanted {n}: {:#?}",
                watches.len(),
                self.requests(res)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn write_kubeconfig(port: u16) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: fake
  context:
    cluster: fake
    user: sluice
current-context: fake
users:
- name: sluice
  user:
    token: {TOKEN}
"
    );
    std::fs::write(&path, yaml).expect("write kubeconfig");
    (dir, path)
}

async fn serve(listener: TcpListener, shared: Shared) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(connection(sock, Arc::clone(&shared)));
    }
}

/// Answers one request, then closes the connection (`Connection: close`).
async fn connection(mut sock: TcpStream, shared: Shared) {
    let Some((target, authorization)) = read_head(&mut sock).await else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let watch = params.get("watch").map(String::as_str) == Some("true");
    let Some(res) = Res::from_path(path) else {
        let body = status_json(
            404,
            "NotFound",
            &format!("the server could not find {path}"),
        );
        let _ = respond(&mut sock, 404, &body).await;
        return;
    };
    let mut request = Request {
        watch,
        query: query.to_owned(),
        params,
        authorization,
        status: 200,
    };
    // Decide under the lock, answer after releasing it.
    let (answer, events) = {
        let mut shared = shared.lock().expect("lock");
        let served = shared.get_mut(&res).expect("resource");
        let error = if watch {
            served.watch_errors.pop_front()
        } else {
            served.list_errors.pop_front()
        };
        let answer = match error {
            Some((code, status)) => {
                request.status = code;
                Err((code, status))
            }
            None => Ok(json!({
                "kind": res.list_kind(),
                "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": served.resource_version},
                "items": served.items.iter().filter(|o| selects(&request, o)).collect::<Vec<_>>(),
            })),
        };
        served.requests.push(request.clone());
        (answer, Arc::clone(&served.events))
    };
    let _ = match answer {
        Err((code, status)) => respond(&mut sock, code, &status).await,
        Ok(_) if watch => stream_events(&mut sock, &events, &request).await,
        Ok(list) => respond(&mut sock, 200, &list).await,
    };
}

/// Reads the request head; returns the request target and the Authorization header.
async fn read_head(sock: &mut TcpStream) -> Option<(String, Option<String>)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        let n = sock.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    assert_eq!(request_line.next(), Some("GET"), "watchers only GET");
    let target = request_line.next()?.to_owned();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_owned());
    Some((target, authorization))
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

async fn respond(sock: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        reason_phrase(code),
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

/// A chunked watch response carrying the events sent to this collection, until the test
/// ends it or the client hangs up.
async fn stream_events(
    sock: &mut TcpStream,
    events: &tokio::sync::Mutex<mpsc::UnboundedReceiver<Chunk>>,
    request: &Request,
) -> std::io::Result<()> {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    sock.write_all(head.as_bytes()).await?;
    sock.flush().await?;
    let mut events = events.lock().await;
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            chunk = events.recv() => match chunk {
                // Changes of objects the field selector leaves out are not this watch's
                // (BOOKMARK and ERROR events always pass).
                Some(Chunk::Event(event))
                    if matches!(event["type"].as_str(), Some("ADDED" | "MODIFIED" | "DELETED"))
                        && !selects(request, &event["object"]) => {}
                Some(Chunk::Event(event)) => {
                    let line = format!("{event}\n");
                    let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                    sock.write_all(chunk.as_bytes()).await?;
                    sock.flush().await?;
                }
                Some(Chunk::End) | None => {
                    sock.write_all(b"0\r\n\r\n").await?;
                    return sock.shutdown().await;
                }
            },
            // The client hung up (it dropped the stream); leave the events to the next one.
            _ = sock.read(&mut probe) => return Ok(()),
        }
    }
}

/// Whether `object` passes the request's `fieldSelector`, as the API server filters lists
/// and watches: only `spec.nodeName=NAME` (the pod field selector the agent once
/// used) is understood; anything else is a test bug.
fn selects(request: &Request, object: &Value) -> bool {
    let Some(selector) = request.param("fieldSelector") else {
        return true;
    };
    let selector = selector.replace("%3D", "=").replace("%2C", ",");
    selector.split(',').all(|term| match term.split_once('=') {
        Some(("spec.nodeName", name)) => {
            object["spec"]["nodeName"].as_str().unwrap_or_default() == name
        }
        _ => panic!("the fake API server does not understand fieldSelector {selector:?}"),
    })
}

pub fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}
