//! The Kubernetes API watchers ([`daemon::kube`]) against a fake API server written here: a
//! small HTTP/1.1 server on 127.0.0.1 that speaks the list/watch protocol with real
//! Kubernetes JSON at the real paths. Lists answer `{"kind":"PodList",…,"items":[…]}` with a
//! resourceVersion (items without `kind`/`apiVersion`, as the API server sends them);
//! watches answer a chunked stream of one `{"type":…,"object":…}` event per line, fed by
//! the test; either can be answered with a `Status` and an error code instead. Every
//! request is recorded so tests can assert on what the watchers asked for.

//!
//! The server is test-support's `kube_fake` (the agent's tests use it too), the objects it
//! serves in `kube_api/objects.rs`.

#[path = "kube_api/objects.rs"]
mod objects;

use test_support::kube_fake as fake;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon::kube::{watch, KubeError, KubeSource};
use daemon::model::{ClusterState, Kind, Object};
use ipnetwork::IpNetwork;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch as channel;

use fake::{status_json, write_kubeconfig, FakeApi, Res, DEADLINE, NODE, TOKEN};
use objects::{
    bookmark, cluster, endpoint_slice, model_object, namespace, node, pod, service, state_of, typed,
};

/// How soon a change must be published.
const PUBLISH_WITHIN: Duration = Duration::from_secs(1);

/// `namespace/name` (or `name`) of every object of each kind in `state`.
fn names(state: &ClusterState) -> BTreeMap<Kind, Vec<String>> {
    fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
        let name = meta.name.clone().unwrap_or_default();
        match &meta.namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name,
        }
    }
    let mut out = BTreeMap::new();
    let mut put = |kind, keys: Vec<String>| {
        if !keys.is_empty() {
            out.insert(kind, keys);
        }
    };
    put(
        Kind::Namespace,
        state.namespaces().map(|o| key(&o.metadata)).collect(),
    );
    put(Kind::Pod, state.pods().map(|o| key(&o.metadata)).collect());
    put(
        Kind::Service,
        state.services().map(|o| key(&o.metadata)).collect(),
    );
    put(
        Kind::EndpointSlice,
        state.endpoint_slices().map(|o| key(&o.metadata)).collect(),
    );
    put(
        Kind::NetworkPolicy,
        state.network_policies().map(|o| key(&o.metadata)).collect(),
    );
    put(
        Kind::Node,
        state.nodes().map(|o| key(&o.metadata)).collect(),
    );
    out
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Waits until the published state satisfies `pred`; returns it and how long it took.
async fn wait_for(
    rx: &mut channel::Receiver<Arc<ClusterState>>,
    what: &str,
    pred: impl Fn(&ClusterState) -> bool,
) -> (Arc<ClusterState>, Duration) {
    let start = Instant::now();
    let deadline = start + DEADLINE;
    loop {
        let state = Arc::clone(&rx.borrow_and_update());
        if pred(&state) {
            return (state, start.elapsed());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("watcher stopped while waiting for {what}"),
            Err(_) => panic!(
                "no state with {what} within {DEADLINE:?}: {:#?}",
                names(&state)
            ),
        }
    }
}

fn pod_ip(state: &ClusterState, ns: &str, name: &str) -> Option<String> {
    state.pod(ns, name)?.status.as_ref()?.pod_ip.clone()
}

fn service_port(state: &ClusterState, ns: &str, name: &str) -> Option<i32> {
    let spec = state.service(ns, name)?.spec.as_ref()?;
    Some(spec.ports.as_ref()?.first()?.port)
}

/// Test that the initial list of every kind lands in the first published state exactly,
/// from one list request per collection, authenticated with the kubeconfig's token.
#[tokio::test]
async fn kube_initial_list_lands_in_model() {
    let mut served = cluster();
    // The API server sends managedFields; the watcher drops them.
    let mut with_managed = served[1].1[0].clone();
    with_managed["metadata"]["managedFields"] = json!([{
        "manager": "kubelet",
        "operation": "Update",
        "apiVersion": "v1",
        "time": "2025-06-01T10:05:01Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:status": {"f:podIP": {}}},
        "subresource": "status",
    }]);
    let mut on_server = served.clone();
    on_server[1].1[0] = with_managed;
    let api = FakeApi::start(on_server).await;

    let (rx, _task) = watch(api.source()).await.expect("initial sync");
    let state = Arc::clone(&rx.borrow());

    assert_eq!(
        names(&state),
        BTreeMap::from([
            (Kind::Namespace, keys(&["default", "shop"])),
            (Kind::Pod, keys(&["shop/db-0", "shop/web-1"])),
            (Kind::Service, keys(&["default/kubernetes", "shop/web"])),
            (Kind::EndpointSlice, keys(&["shop/web-x7k2p"])),
            (Kind::NetworkPolicy, keys(&["shop/db-from-web"])),
            (Kind::Node, keys(&[NODE, "node-b"])),
        ])
    );
    served[1].1[0]["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("managedFields");
    assert_eq!(*state, state_of(&served));
    assert_eq!(
        pod_ip(&state, "shop", "web-1").as_deref(),
        Some("10.244.1.5")
    );
    assert_eq!(
        state
            .pod("shop", "web-1")
            .expect("pod")
            .metadata
            .managed_fields,
        None
    );
    assert_eq!(
        state.pod_cidrs("node-b"),
        vec!["10.244.2.0/24".parse::<IpNetwork>().expect("cidr")]
    );

    for res in Res::ALL {
        let lists = api.lists(res);
        assert_eq!(lists.len(), 1, "{res:?}: {lists:#?}");
        // Most-recent lists (no resourceVersion=0), paged as client-go does.
        assert_eq!(lists[0].param("limit"), Some("500"), "{res:?}");
        assert_eq!(lists[0].param("resourceVersion"), None, "{res:?}");
        assert_eq!(
            lists[0].authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{res:?}"
        );
    }
}

/// Test that every collection, pods included, is listed and watched cluster-wide (no
/// `fieldSelector`), so a pod of another node (a NetworkPolicy peer, a Service endpoint)
/// reaches the model, listed and from a watch event.
#[tokio::test]
async fn kube_pods_of_every_node_watched() {
    let mut served = cluster();
    let mut remote = pod("shop", "web-9", "10.244.2.9", "web", "42");
    remote["spec"]["nodeName"] = json!("node-b");
    served[1].1.push(remote);
    let api = FakeApi::start(served).await;
    let (mut rx, _task) = watch(api.source()).await.expect("initial sync");
    for res in Res::ALL {
        api.wait_watches(res, 1).await;
    }
    assert_eq!(
        pod_ip(&rx.borrow(), "shop", "web-9").as_deref(),
        Some("10.244.2.9")
    );
    let mut added = pod("shop", "web-8", "10.244.2.8", "web", "101");
    added["spec"]["nodeName"] = json!("node-b");
    api.send(Res::Pods, "ADDED", typed(Res::Pods, added));
    let (state, _) = wait_for(&mut rx, "remote pod web-8", |s| {
        s.pod("shop", "web-8").is_some()
    })
    .await;
    assert_eq!(
        pod_ip(&state, "shop", "web-8").as_deref(),
        Some("10.244.2.8")
    );

    for res in Res::ALL {
        for request in api.requests(res) {
            assert_eq!(
                request.param("fieldSelector"),
                None,
                "{res:?}: {}",
                request.query
            );
        }
    }
}

/// Test that ADDED, MODIFIED and DELETED events of several kinds reach the model and are
/// published within a second, and that every watch asks for bookmarks from the list's
/// resourceVersion.
#[tokio::test]
async fn kube_watch_events_reach_model() {
    let api = FakeApi::start(cluster()).await;
    let (mut rx, _task) = watch(api.source()).await.expect("initial sync");
    for res in Res::ALL {
        let watches = api.wait_watches(res, 1).await;
        assert_eq!(watches[0].param("resourceVersion"), Some("100"), "{res:?}");
        assert_eq!(
            watches[0].param("allowWatchBookmarks"),
            Some("true"),
            "{res:?}"
        );
    }

    let added = pod("shop", "web-2", "10.244.1.7", "web", "101");
    api.send(Res::Pods, "ADDED", typed(Res::Pods, added.clone()));
    let (state, took) = wait_for(&mut rx, "pod web-2", |s| s.pod("shop", "web-2").is_some()).await;
    assert!(took < PUBLISH_WITHIN, "ADDED published after {took:?}");
    assert_eq!(
        state.pod("shop", "web-2").map(|p| Object::Pod(p.clone())),
        Some(model_object(Res::Pods, &added))
    );

    api.send(
        Res::Services,
        "MODIFIED",
        typed(
            Res::Services,
            service("shop", "web", "10.96.12.7", 8081, "102"),
        ),
    );
    let (_, took) = wait_for(&mut rx, "service port 8081", |s| {
        service_port(s, "shop", "web") == Some(8081)
    })
    .await;
    assert!(took < PUBLISH_WITHIN, "MODIFIED published after {took:?}");

    api.send(
        Res::EndpointSlices,
        "DELETED",
        typed(
            Res::EndpointSlices,
            endpoint_slice("shop", "web-x7k2p", "web", &["10.244.1.5"], "103"),
        ),
    );
    let (_, took) = wait_for(&mut rx, "slice deleted", |s| {
        s.endpoint_slice("shop", "web-x7k2p").is_none()
    })
    .await;
    assert!(took < PUBLISH_WITHIN, "DELETED published after {took:?}");

    api.send(
        Res::Namespaces,
        "ADDED",
        typed(Res::Namespaces, namespace("billing", "104")),
    );
    api.send(
        Res::Nodes,
        "MODIFIED",
        typed(
            Res::Nodes,
            node("node-b", "10.244.9.0/24", "192.168.50.11", "105"),
        ),
    );
    let (state, took) = wait_for(&mut rx, "namespace billing and node-b moved", |s| {
        s.namespace("billing").is_some()
            && s.pod_cidrs("node-b") == ["10.244.9.0/24".parse::<IpNetwork>().expect("cidr")]
    })
    .await;
    assert!(took < PUBLISH_WITHIN, "burst published after {took:?}");
    assert_eq!(
        names(&state),
        BTreeMap::from([
            (Kind::Namespace, keys(&["billing", "default", "shop"])),
            (Kind::Pod, keys(&["shop/db-0", "shop/web-1", "shop/web-2"])),
            (Kind::Service, keys(&["default/kubernetes", "shop/web"])),
            (Kind::NetworkPolicy, keys(&["shop/db-from-web"])),
            (Kind::Node, keys(&[NODE, "node-b"])),
        ])
    );
    // Events only: no relist.
    for res in Res::ALL {
        assert_eq!(api.lists(res).len(), 1, "{res:?}");
    }
}

/// Test that a BOOKMARK is accepted and, when the watch response ends, the next watch
/// resumes from the bookmark's resourceVersion without a relist.
#[tokio::test]
async fn kube_bookmark_moves_resume_point() {
    let api = FakeApi::start(cluster()).await;
    let (mut rx, _task) = watch(api.source()).await.expect("initial sync");
    let watches = api.wait_watches(Res::Services, 1).await;
    assert_eq!(watches[0].param("resourceVersion"), Some("100"));

    api.send(Res::Services, "BOOKMARK", bookmark(Res::Services, "250"));
    api.end_watch(Res::Services);
    let watches = api.wait_watches(Res::Services, 2).await;
    assert_eq!(watches[1].param("resourceVersion"), Some("250"));
    assert_eq!(watches[1].param("allowWatchBookmarks"), Some("true"));
    assert_eq!(api.lists(Res::Services).len(), 1);

    // The resumed stream carries events.
    api.send(
        Res::Services,
        "ADDED",
        typed(
            Res::Services,
            service("shop", "cart", "10.96.12.9", 80, "251"),
        ),
    );
    let (state, took) = wait_for(&mut rx, "service cart", |s| {
        s.service("shop", "cart").is_some()
    })
    .await;
    assert!(took < PUBLISH_WITHIN, "ADDED published after {took:?}");
    assert_eq!(
        names(&state)[&Kind::Service],
        keys(&["default/kubernetes", "shop/cart", "shop/web"])
    );
}

/// Test that a watch ERROR event with code 410 (Expired) makes the watcher relist, that
/// objects missing from the new list are removed and changed ones replaced, and that the
/// next watch starts from the new list's resourceVersion.
#[tokio::test]
async fn kube_watch_error_410_relists() {
    let api = FakeApi::start(cluster()).await;
    let (mut rx, _task) = watch(api.source()).await.expect("initial sync");
    api.wait_watches(Res::Services, 1).await;

    let relisted = vec![
        service("default", "kubernetes", "10.96.0.1", 443, "20"),
        service("shop", "cart", "10.96.12.9", 80, "280"),
    ];
    api.set_list(Res::Services, relisted.clone(), "300");
    let expired = status_json(410, "Expired", "too old resource version: 100 (290)");
    api.send(Res::Services, "ERROR", expired);

    let (state, _) = wait_for(&mut rx, "relisted services", |s| {
        s.service("shop", "web").is_none() && s.service("shop", "cart").is_some()
    })
    .await;
    let mut expected = cluster();
    expected[2].1 = relisted;
    assert_eq!(*state, state_of(&expected));

    assert_eq!(api.lists(Res::Services).len(), 2);
    let watches = api.wait_watches(Res::Services, 2).await;
    assert_eq!(watches[1].param("resourceVersion"), Some("300"));
    // Only the expired collection was listed again.
    assert_eq!(api.lists(Res::Pods).len(), 1);
}

/// Test that a watch answered with HTTP 410 Gone (rather than a 410 ERROR event) also
/// leads to a relist, and that pods missing from it are removed.
#[tokio::test]
async fn kube_watch_http_410_relists() {
    let api = FakeApi::start(cluster()).await;
    let (mut rx, _task) = watch(api.source()).await.expect("initial sync");
    api.wait_watches(Res::Pods, 1).await;

    let relisted = vec![pod("shop", "db-0", "10.244.1.6", "db", "41")];
    api.set_list(Res::Pods, relisted.clone(), "400");
    let gone = status_json(410, "Gone", "too old resource version: 100 (390)");
    api.fail_next_watch(Res::Pods, 410, gone);
    // The watch response ends, the watcher re-watches from resourceVersion 100: 410.
    api.end_watch(Res::Pods);

    let (state, _) = wait_for(&mut rx, "pod web-1 removed", |s| {
        s.pod("shop", "web-1").is_none()
    })
    .await;
    let mut expected = cluster();
    expected[1].1 = relisted;
    assert_eq!(*state, state_of(&expected));

    api.wait_watches(Res::Pods, 3).await;
    let seen: Vec<(bool, Option<String>, u16)> = api
        .requests(Res::Pods)
        .iter()
        .map(|r| {
            (
                r.watch,
                r.param("resourceVersion").map(str::to_owned),
                r.status,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (false, None, 200),
            (true, Some("100".to_owned()), 200),
            (true, Some("100".to_owned()), 410),
            (false, None, 200),
            (true, Some("400".to_owned()), 200),
        ]
    );
}

/// Test that `watch` returns only once every kind is listed: a list that fails first is
/// retried, and the first state already holds its objects.
#[tokio::test]
async fn kube_first_state_waits_for_every_kind() {
    let api = FakeApi::start(cluster()).await;
    let internal = status_json(500, "InternalError", "etcdserver: request timed out");
    api.fail_next_lists(Res::NetworkPolicies, 1, 500, internal);

    let (rx, _task) = watch(api.source()).await.expect("initial sync");
    assert_eq!(*rx.borrow().clone(), state_of(&cluster()));
    let statuses: Vec<u16> = api
        .lists(Res::NetworkPolicies)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [500, 200]);
}

/// Test that `watch` fails after its timeout naming exactly the kinds that could not be
/// listed, with the API's refusal as the source.
#[tokio::test]
async fn kube_sync_timeout_names_unlisted_kinds() {
    let api = FakeApi::start(cluster()).await;
    let message = "networkpolicies.networking.k8s.io is forbidden: User \
                   \"system:serviceaccount:kube-system:sluice\" cannot list resource \
                   \"networkpolicies\" in API group \"networking.k8s.io\" at the cluster scope";
    let forbidden = status_json(403, "Forbidden", message);
    api.fail_next_lists(Res::NetworkPolicies, 100, 403, forbidden);

    let mut src = api.source();
    src.sync_timeout = Duration::from_secs(2);
    let err = watch(src)
        .await
        .expect_err("network policies are forbidden");
    assert_eq!(
        err.to_string(),
        "initial list of NetworkPolicy not complete after 2s"
    );
    let KubeError::SyncTimeout {
        pending,
        last_error,
        ..
    } = &err
    else {
        panic!("not a sync timeout: {err:?}");
    };
    assert_eq!(pending, &[Kind::NetworkPolicy]);
    let last_error = last_error.as_ref().expect("the list's error").to_string();
    assert!(last_error.contains(message), "{last_error}");
    assert!(api.lists(Res::NetworkPolicies).len() >= 2, "retried");
}

/// Test that with the API server down at start, `watch` fails after its timeout naming
/// every kind.
#[tokio::test]
async fn kube_server_down_fails_after_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let (_dir, kubeconfig) = write_kubeconfig(port);
    let src = KubeSource {
        kubeconfig: Some(kubeconfig),
        node_name: NODE.to_owned(),
        sync_timeout: Duration::from_secs(1),
    };

    let start = Instant::now();
    let err = watch(src).await.expect_err("nothing listens");
    let took = start.elapsed();
    assert_eq!(
        err.to_string(),
        "initial list of Namespace, Pod, Service, EndpointSlice, NetworkPolicy, Node \
         not complete after 1s"
    );
    assert!(
        matches!(
            &err,
            KubeError::SyncTimeout {
                last_error: Some(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// Test that a --kubeconfig that does not exist is an error naming it.
#[tokio::test]
async fn kube_missing_kubeconfig_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing");
    let err = watch(KubeSource::new(Some(path.clone()), NODE))
        .await
        .expect_err("no file");
    assert_eq!(
        err.to_string(),
        format!("cannot use kubeconfig {}", path.display())
    );
    assert!(matches!(err, KubeError::Kubeconfig { .. }), "{err:?}");
}

/// Test that the follower task ends once every receiver is dropped.
#[tokio::test]
async fn kube_stops_when_receivers_dropped() {
    let api = FakeApi::start(cluster()).await;
    let (rx, task) = watch(api.source()).await.expect("initial sync");
    drop(rx);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("task ends")
        .expect("task does not panic");
}
