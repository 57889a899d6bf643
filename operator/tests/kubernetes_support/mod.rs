//! A fake Kubernetes API server behind a `tower-test` mock service (the kube-rs testing
//! pattern), with just enough semantics for the operator: objects stored by path, create /
//! get / list (equality label selectors) / server-side apply (with `resourceVersion`
//! preconditions) / merge patch / delete (with uid preconditions), the status subresource, and
//! watches that stay open and silent. Every request is recorded, in order, with the journal of
//! the fake instance managers, so tests can check what the operator did and in which order.
//!
//! Also: fake instance managers (HTTP servers on 127.0.0.x answering `/v1/status` with a given
//! report and recording `/v1/requests`), and the shared scenarios the reconcile and RBAC tests
//! both run.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::Client;
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use opengauss_crd::OpenGaussCluster;
use opengauss_operator::platform::kubernetes::Options;
use opengauss_operator::platform::kubernetes::caches::{CacheWriters, Caches};
use opengauss_operator::platform::kubernetes::reconcile::{Context, reconcile};
use serde_json::{Value, json};

pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// One request the operator made, or one thing a fake manager received.
#[derive(Clone, Debug)]
pub enum Entry {
    Api(Call),
    Manager { instance: String, request: Value },
}

/// One API request and the status it got.
#[derive(Clone, Debug)]
pub struct Call {
    /// Which client made it (see `FakeApi::client_as`).
    pub who: String,
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: Option<Value>,
    pub status: u16,
}

/// Where an API path points.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    pub fn parse(path: &str) -> Option<Self> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match parts.as_slice() {
            ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
            ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
            _ => (None, rest),
        };
        let resource = rest.first()?.to_string();
        Some(Self {
            group,
            version,
            resource,
            namespace,
            name: rest.get(1).map(|s| s.to_string()),
            subresource: rest.get(2).map(|s| s.to_string()),
        })
    }

    /// `resource` or `resource/subresource`, as RBAC names it.
    pub fn rbac_resource(&self) -> String {
        match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        }
    }

    fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.group,
            self.resource,
            self.namespace.clone().unwrap_or_default(),
            self.name.clone().unwrap_or_default()
        )
    }
}

impl Call {
    pub fn target(&self) -> Target {
        Target::parse(&self.path).unwrap_or_else(|| panic!("unexpected API path {}", self.path))
    }

    pub fn is_apply(&self) -> bool {
        self.content_type.starts_with("application/apply-patch")
    }

    /// The RBAC verbs this request needs. A server-side apply may create the object, which
    /// the API server authorises as `create` as well as `patch`.
    pub fn verbs(&self) -> Vec<&'static str> {
        let t = self.target();
        match self.method.as_str() {
            "GET" if self.query.get("watch").is_some_and(|w| w == "true" || w == "1") => vec!["watch"],
            "GET" if t.name.is_none() => vec!["list"],
            "GET" => vec!["get"],
            "POST" => vec!["create"],
            "PUT" => vec!["update"],
            "PATCH" if self.is_apply() && t.subresource.is_none() => vec!["patch", "create"],
            "PATCH" => vec!["patch"],
            "DELETE" if t.name.is_none() => vec!["deletecollection"],
            "DELETE" => vec!["delete"],
            other => panic!("unexpected method {other}"),
        }
    }

    /// Whether this request changes something.
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// A short description: `PATCH pods/og-0` and so on.
    pub fn short(&self) -> String {
        let t = self.target();
        let mut s = format!("{} {}", self.method, t.rbac_resource());
        if let Some(n) = &t.name {
            s = format!("{} {}/{}", self.method, t.resource, n);
            if let Some(sub) = &t.subresource {
                s.push('/');
                s.push_str(sub);
            }
        }
        s
    }
}

#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Value>,
    journal: Vec<Entry>,
    rv: u64,
    uids: u64,
}

/// The fake API server.
#[derive(Clone, Default)]
pub struct FakeApi {
    store: Arc<Mutex<Store>>,
    /// The operator's watch caches, filled from the stored objects before each reconcile (as
    /// the watches do in the operator).
    caches: Arc<Mutex<Option<CacheWriters>>>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn matches_selector(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k.trim_end_matches('=')].as_str() == Some(v.trim_start_matches('=')),
        None => labels.get(term).is_some(),
    })
}

/// JSON merge patch (RFC 7386).
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "code": code, "reason": reason, "message": message, "metadata": {}
    })
}

fn full(value: &Value) -> ResponseBody {
    Full::new(Bytes::from(serde_json::to_vec(value).expect("json"))).boxed_unsync()
}

fn kind_of(target: &Target) -> &'static str {
    match target.resource.as_str() {
        "pods" => "Pod",
        "persistentvolumeclaims" => "PersistentVolumeClaim",
        "services" => "Service",
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        "poddisruptionbudgets" => "PodDisruptionBudget",
        "events" => "Event",
        "leases" => "Lease",
        "opengaussclusters" => "OpenGaussCluster",
        "customresourcedefinitions" => "CustomResourceDefinition",
        _ => "Unknown",
    }
}

fn api_version(target: &Target) -> String {
    if target.group.is_empty() {
        target.version.clone()
    } else {
        format!("{}/{}", target.group, target.version)
    }
}

impl FakeApi {
    pub fn new() -> Self {
        Self::default()
    }

    /// A kube client whose requests this fake answers.
    pub fn client(&self) -> Client {
        self.client_as("operator")
    }

    /// A client whose calls are recorded as made by `who` (one operator replica of several).
    pub fn client_as(&self, who: &str) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let me = self.clone();
        let who = who.to_string();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = me.handle(&who, request).await;
                send.send_response(response);
            }
        });
        Client::new(service, "default")
    }

    fn next_rv(store: &mut Store) -> String {
        store.rv += 1;
        store.rv.to_string()
    }

    /// Puts an object in place as if created by someone else (kubectl, the kubelet...).
    pub fn insert(&self, path_of_object: &str, mut object: Value) -> Value {
        let target = Target::parse(path_of_object).expect("object path");
        let mut store = self.store.lock().expect("store");
        store.uids += 1;
        let uid = format!("uid-{}-{}", target.name.clone().unwrap_or_default(), store.uids);
        let rv = Self::next_rv(&mut store);
        let meta = object["metadata"].as_object_mut().expect("metadata");
        meta.entry("uid").or_insert(json!(uid));
        meta.insert("resourceVersion".into(), json!(rv));
        meta.entry("generation").or_insert(json!(1));
        meta.entry("creationTimestamp").or_insert(json!("2025-01-01T00:00:00Z"));
        if let Some(ns) = &target.namespace {
            meta.entry("namespace").or_insert(json!(ns));
        }
        store.objects.insert(target.key(), object.clone());
        object
    }

    /// The stored object at a path, if any.
    pub fn get(&self, path_of_object: &str) -> Option<Value> {
        let target = Target::parse(path_of_object).expect("object path");
        self.store.lock().expect("store").objects.get(&target.key()).cloned()
    }

    /// Changes a stored object in place (the kubelet updating a pod, a user editing...).
    pub fn modify(&self, path_of_object: &str, f: impl FnOnce(&mut Value)) {
        let target = Target::parse(path_of_object).expect("object path");
        let mut store = self.store.lock().expect("store");
        let rv = Self::next_rv(&mut store);
        let object = store.objects.get_mut(&target.key()).unwrap_or_else(|| panic!("no {path_of_object}"));
        f(object);
        object["metadata"]["resourceVersion"] = json!(rv);
    }

    pub fn remove(&self, path_of_object: &str) {
        let target = Target::parse(path_of_object).expect("object path");
        self.store.lock().expect("store").objects.remove(&target.key());
    }

    /// Stored objects of one resource (in one namespace, or all).
    pub fn list(&self, group: &str, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let store = self.store.lock().expect("store");
        store
            .objects
            .iter()
            .filter(|(k, _)| {
                let parts: Vec<&str> = k.splitn(4, '/').collect();
                parts[0] == group && parts[1] == resource && namespace.is_none_or(|ns| parts[2] == ns)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Fills the operator's caches with the stored objects it manages, replacing what they
    /// held (a watch's relist).
    pub fn sync_caches(&self) {
        use kube::runtime::watcher::Event;
        fn fill<K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned>(
            writer: &mut kube::runtime::reflector::store::Writer<K>,
            objects: Vec<Value>,
        ) {
            writer.apply_watcher_event(&Event::Init);
            for o in objects {
                let managed = o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "opengauss-operator";
                if managed && let Ok(typed) = serde_json::from_value::<K>(o) {
                    writer.apply_watcher_event(&Event::InitApply(typed));
                }
            }
            writer.apply_watcher_event(&Event::InitDone);
        }
        let mut guard = self.caches.lock().expect("caches");
        let Some(w) = guard.as_mut() else { return };
        fill(&mut w.pods, self.list("", "pods", None));
        fill(&mut w.services, self.list("", "services", None));
        fill(&mut w.config_maps, self.list("", "configmaps", None));
        fill(&mut w.budgets, self.list("policy", "poddisruptionbudgets", None));
    }

    pub fn journal(&self) -> Vec<Entry> {
        self.store.lock().expect("store").journal.clone()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.journal()
            .into_iter()
            .filter_map(|e| match e {
                Entry::Api(c) => Some(c),
                Entry::Manager { .. } => None,
            })
            .collect()
    }

    pub fn writes(&self) -> Vec<Call> {
        self.calls().into_iter().filter(Call::is_write).collect()
    }

    pub fn clear_journal(&self) {
        self.store.lock().expect("store").journal.clear();
    }

    pub fn record_manager(&self, instance: &str, request: Value) {
        self.store
            .lock()
            .expect("store")
            .journal
            .push(Entry::Manager { instance: instance.to_string(), request });
    }

    async fn handle(&self, who: &str, request: Request<Body>) -> Response<ResponseBody> {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let query = parse_query(request.uri().query());
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap_or_default();
        let body: Option<Value> = if bytes.is_empty() { None } else { serde_json::from_slice(&bytes).ok() };
        let target = Target::parse(&path).unwrap_or_else(|| panic!("unexpected path {path}"));
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        let (code, response) = if watch {
            (200, None)
        } else {
            let mut store = self.store.lock().expect("store");
            let (code, value) =
                Self::answer(&mut store, &method, &target, &query, &content_type, body.as_ref());
            (code, Some(value))
        };
        self.store.lock().expect("store").journal.push(Entry::Api(Call {
            who: who.to_string(),
            method,
            path,
            query,
            content_type,
            body,
            status: code,
        }));
        let body = match response {
            Some(v) => full(&v),
            // A watch that stays open and silent until the client goes away.
            None => {
                StreamBody::new(futures::stream::pending::<Result<http_body::Frame<Bytes>, Infallible>>())
                    .boxed_unsync()
            }
        };
        Response::builder()
            .status(StatusCode::from_u16(code).expect("status"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .expect("response")
    }

    fn answer(
        store: &mut Store,
        method: &str,
        target: &Target,
        query: &BTreeMap<String, String>,
        content_type: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let key = target.key();
        let not_found =
            || (404, status_body(404, "NotFound", &format!("{} not found", target.rbac_resource())));
        match (method, &target.name) {
            ("GET", None) => {
                let prefix = format!("{}/{}/", target.group, target.resource);
                let items: Vec<Value> = store
                    .objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .filter(|(k, _)| {
                        target
                            .namespace
                            .as_ref()
                            .is_none_or(|ns| k[prefix.len()..].starts_with(&format!("{ns}/")))
                    })
                    .map(|(_, v)| v.clone())
                    .filter(|v| matches_selector(v, query.get("labelSelector")))
                    .collect();
                let rv = store.rv.to_string();
                (
                    200,
                    json!({"apiVersion": api_version(target), "kind": format!("{}List", kind_of(target)),
                           "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            ("GET", Some(_)) => match store.objects.get(&key) {
                Some(o) => (200, o.clone()),
                None => not_found(),
            },
            ("POST", None) => {
                let mut object = body.cloned().unwrap_or(json!({}));
                let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let mut t = target.clone();
                t.name = Some(name.clone());
                if store.objects.contains_key(&t.key()) {
                    return (409, status_body(409, "AlreadyExists", &format!("{name} already exists")));
                }
                Self::stamp_new(store, &mut object, target);
                store.objects.insert(t.key(), object.clone());
                (201, object)
            }
            ("PATCH", Some(name)) => {
                let patch = body.cloned().unwrap_or(json!({}));
                let apply = content_type.starts_with("application/apply-patch");
                let status_sub = target.subresource.as_deref() == Some("status");
                match store.objects.get(&key).cloned() {
                    None if apply && !status_sub => {
                        let mut object = patch;
                        object["metadata"]["name"] = json!(name);
                        Self::stamp_new(store, &mut object, target);
                        store.objects.insert(key, object.clone());
                        (201, object)
                    }
                    None => not_found(),
                    Some(mut object) => {
                        if let Some(want) = patch["metadata"]["resourceVersion"].as_str()
                            && Some(want) != object["metadata"]["resourceVersion"].as_str()
                        {
                            return (409, status_body(409, "Conflict", "the object has been modified"));
                        }
                        if status_sub {
                            object["status"] = patch["status"].clone();
                        } else {
                            let before = object.get("spec").cloned();
                            let mut p = patch.clone();
                            if let Some(m) = p["metadata"].as_object_mut() {
                                m.remove("resourceVersion");
                            }
                            merge(&mut object, &p);
                            if object.get("spec").cloned() != before {
                                let g = object["metadata"]["generation"].as_i64().unwrap_or(1);
                                object["metadata"]["generation"] = json!(g + 1);
                            }
                        }
                        object["metadata"]["resourceVersion"] = json!(Self::next_rv(store));
                        store.objects.insert(key, object.clone());
                        (200, object)
                    }
                }
            }
            ("DELETE", Some(name)) => {
                let Some(object) = store.objects.get(&key).cloned() else {
                    return not_found();
                };
                let want_uid = body.and_then(|b| b["preconditions"]["uid"].as_str().map(String::from));
                if let Some(uid) = want_uid
                    && object["metadata"]["uid"].as_str() != Some(uid.as_str())
                {
                    return (
                        409,
                        status_body(409, "Conflict", &format!("uid precondition failed for {name}")),
                    );
                }
                store.objects.remove(&key);
                (200, object)
            }
            _ => (405, status_body(405, "MethodNotAllowed", &format!("{method} {key}"))),
        }
    }

    fn stamp_new(store: &mut Store, object: &mut Value, target: &Target) {
        store.uids += 1;
        let uid = format!("uid-{}-{}", object["metadata"]["name"].as_str().unwrap_or_default(), store.uids);
        let rv = Self::next_rv(store);
        let meta = object["metadata"].as_object_mut().expect("metadata");
        meta.insert("uid".into(), json!(uid));
        meta.insert("resourceVersion".into(), json!(rv));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!("2025-01-01T00:00:00Z"));
        if let Some(ns) = &target.namespace {
            meta.insert("namespace".into(), json!(ns));
        }
        if object.get("apiVersion").is_none() {
            object["apiVersion"] = json!(api_version(target));
        }
        if object.get("kind").is_none() {
            object["kind"] = json!(kind_of(target));
        }
        // Secrets: what is written as stringData is stored as data.
        if target.resource == "secrets"
            && let Some(Value::Object(sd)) = object.as_object_mut().and_then(|o| o.remove("stringData"))
        {
            use base64_like::encode;
            let data: serde_json::Map<String, Value> = sd
                .into_iter()
                .map(|(k, v)| (k, json!(encode(v.as_str().unwrap_or_default().as_bytes()))))
                .collect();
            object["data"] = Value::Object(data);
        }
    }
}

/// Standard base64, enough for Secret data (no external crate needed).
pub mod base64_like {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(input: &[u8]) -> String {
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

// -------------------------------------------------------------------------------------------
// Fixtures

pub const NS: &str = "apps";
pub const OPERATOR_NS: &str = "opengauss-operator-system";

pub fn cluster_path(ns: &str, name: &str) -> String {
    format!("/apis/ha.opengauss.dev/v1alpha1/namespaces/{ns}/opengaussclusters/{name}")
}

pub fn pod_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods/{name}")
}

/// An `OpenGaussCluster` object with `spec` (JSON), as the API server would hold it. Without
/// TLS unless `spec` says otherwise: the fake managers here serve plain HTTP (the first
/// reconcile is checked with TLS on, and the real-cluster suite runs with it).
pub fn cluster_json(name: &str, mut spec: Value) -> Value {
    if spec.get("tls").is_none() {
        spec["tls"] = json!({"enabled": false});
    }
    json!({
        "apiVersion": "ha.opengauss.dev/v1alpha1",
        "kind": "OpenGaussCluster",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    })
}

/// The typed cluster as stored.
pub fn stored_cluster(api: &FakeApi, name: &str) -> OpenGaussCluster {
    serde_json::from_value(api.get(&cluster_path(NS, name)).expect("cluster stored")).expect("cluster parses")
}

/// The operator's settings in these tests.
pub fn options(manager_port: u16) -> Options {
    Options {
        operator_image: "registry.example/opengauss-operator:test".into(),
        cluster_domain: "cluster.local".into(),
        manager_port,
    }
}

pub fn context(api: &FakeApi, manager_port: u16) -> Arc<Context> {
    let options = options(manager_port);
    let (caches, writers) = Caches::new();
    *api.caches.lock().expect("caches") = Some(writers);
    api.sync_caches();
    Arc::new(Context::new(
        api.client(),
        options,
        Reporter { controller: "opengauss-operator".into(), instance: Some("test".into()) },
        caches,
    ))
}

/// Runs one reconcile of the stored cluster `name`.
pub async fn reconcile_once(api: &FakeApi, ctx: &Arc<Context>, name: &str) -> Result<Action, String> {
    api.sync_caches();
    let value = api.get(&cluster_path(NS, name)).expect("cluster stored");
    let guard: DeserializeGuard<OpenGaussCluster> = serde_json::from_value(value).expect("guard parses");
    reconcile(Arc::new(guard), ctx.clone()).await.map_err(|e| e.to_string())
}

/// Marks a pod running with an IP, as the kubelet would.
pub fn run_pod(api: &FakeApi, name: &str, ip: &str) {
    api.modify(&pod_path(NS, name), |p| {
        p["status"] = json!({"phase": "Running", "podIP": ip});
    });
}

/// The role label of each stored pod.
pub fn role_labels(api: &FakeApi) -> BTreeMap<String, String> {
    api.list("", "pods", Some(NS))
        .into_iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                p["metadata"]["labels"]["ha.opengauss.dev/role"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

// -------------------------------------------------------------------------------------------
// Fake instance managers

/// Instance managers on 127.0.0.(10+k), all on one port, answering `/v1/status` with the report
/// set for them and recording every request into the API journal.
#[derive(Clone)]
pub struct FakeManagers {
    pub port: u16,
    reports: Arc<Mutex<BTreeMap<String, Value>>>,
}

pub fn manager_ip(ordinal: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + ordinal)
}

impl FakeManagers {
    /// Starts `count` managers for instances `<cluster>-0..`.
    pub async fn start(api: &FakeApi, cluster: &str, count: u8) -> Self {
        let reports: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
        'attempt: for _ in 0..20 {
            let first = tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(manager_ip(0)), 0))
                .await
                .expect("bind 127.0.0.10");
            let port = first.local_addr().expect("addr").port();
            let mut listeners = vec![first];
            for k in 1..count {
                match tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(manager_ip(k)), port)).await {
                    Ok(l) => listeners.push(l),
                    Err(_) => continue 'attempt,
                }
            }
            for (k, listener) in listeners.into_iter().enumerate() {
                let instance = format!("{cluster}-{k}");
                let app = manager_app(api.clone(), instance, reports.clone());
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                });
            }
            return Self { port, reports };
        }
        panic!("no common free port on 127.0.0.10..");
    }

    /// Sets what `instance` reports; `None` makes it answer 503 (silent).
    pub fn set(&self, instance: &str, report: Option<Value>) {
        let mut reports = self.reports.lock().expect("reports");
        match report {
            Some(r) => {
                reports.insert(instance.to_string(), r);
            }
            None => {
                reports.remove(instance);
            }
        }
    }
}

fn manager_app(api: FakeApi, instance: String, reports: Arc<Mutex<BTreeMap<String, Value>>>) -> axum::Router {
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    let status_instance = instance.clone();
    let status_reports = reports.clone();
    axum::Router::new()
        .route(
            "/v1/status",
            get(move || {
                let report = status_reports.lock().expect("reports").get(&status_instance).cloned();
                async move {
                    match report {
                        Some(r) => (StatusCode::OK, axum::Json(r)).into_response(),
                        None => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({}))).into_response(),
                    }
                }
            }),
        )
        .route(
            "/v1/requests",
            post(move |axum::Json(request): axum::Json<Value>| {
                let api = api.clone();
                let instance = instance.clone();
                async move {
                    let kind = request["kind"].as_str().unwrap_or_default().to_string();
                    api.record_manager(&instance, request);
                    (
                        StatusCode::ACCEPTED,
                        axum::Json(json!({"kind": kind, "state": "running", "requestId": "fake"})),
                    )
                        .into_response()
                }
            }),
        )
}

/// The LSN text of a byte position.
pub fn lsn(pos: u64) -> String {
    format!("{:X}/{:X}", pos >> 32, pos & 0xffff_ffff)
}

/// A report of a writable primary with these standbys streaming.
pub fn primary_report(instance: &str, standbys: &[&str], pos: u64) -> Value {
    let rows: Vec<Value> = standbys
        .iter()
        .map(|s| {
            json!({"instance": s, "state": "streaming", "syncState": "quorum",
                   "sentLsn": lsn(pos), "flushLsn": lsn(pos), "replayLsn": lsn(pos), "lagBytes": 0})
        })
        .collect();
    json!({
        "instance": instance, "managerPid": 1, "phase": "running", "initialized": true,
        "standbyConfigured": false, "fenced": false,
        "server": {"running": true, "pid": 10, "accepting": true},
        "node": {"inRecovery": false, "currentLsn": lsn(pos), "timeline": 1, "synchronousStandbyNames": ""},
        "replication": rows,
    })
}

/// A report of a running standby that has received WAL up to `pos`.
pub fn standby_report(instance: &str, pos: u64) -> Value {
    json!({
        "instance": instance, "managerPid": 1, "phase": "running", "initialized": true,
        "standbyConfigured": true, "fenced": false,
        "server": {"running": true, "pid": 10, "accepting": true},
        "node": {"inRecovery": true, "receivedLsn": lsn(pos), "replayedLsn": lsn(pos), "timeline": 1,
                 "synchronousStandbyNames": ""},
        "receiver": {"status": "streaming", "flushedLsn": lsn(pos)},
    })
}

/// Waits until `pred` holds on the fake, polling.
pub async fn eventually(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !pred() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// -------------------------------------------------------------------------------------------
// Scenarios shared by the reconcile tests and the RBAC test

/// A fresh three-instance openGauss cluster, reconciled once.
pub async fn scenario_first_reconcile() -> (FakeApi, Arc<Context>, Result<Action, String>) {
    let api = FakeApi::new();
    api.insert(
        &cluster_path(NS, "og"),
        cluster_json("og", json!({"instances": 3, "engine": "openGauss", "tls": {"enabled": true}})),
    );
    let ctx = context(&api, 8000);
    let result = reconcile_once(&api, &ctx, "og").await;
    (api, ctx, result)
}

/// After the first reconcile: the pods run, og-0's manager waits for bootstrap, then reports a
/// writable primary.
pub async fn scenario_bootstrap() -> (FakeApi, Arc<Context>, FakeManagers) {
    let api = FakeApi::new();
    api.insert(&cluster_path(NS, "og"), cluster_json("og", json!({"instances": 3})));
    let managers = FakeManagers::start(&api, "og", 3).await;
    let ctx = context(&api, managers.port);
    reconcile_once(&api, &ctx, "og").await.expect("first reconcile");
    for k in 0..3u8 {
        run_pod(&api, &format!("og-{k}"), &manager_ip(k).to_string());
    }
    managers.set(
        "og-0",
        Some(json!({
            "instance": "og-0", "managerPid": 1, "phase": "awaitingBootstrap", "initialized": false,
            "standbyConfigured": false, "fenced": false, "server": {"running": false, "accepting": false},
        })),
    );
    api.clear_journal();
    reconcile_once(&api, &ctx, "og").await.expect("second reconcile");
    managers.set("og-0", Some(primary_report("og-0", &[], 0x3000000)));
    reconcile_once(&api, &ctx, "og").await.expect("third reconcile");
    (api, ctx, managers)
}

/// A healthy cluster (og-0 primary, og-1 and og-2 streaming) stored with its status and labels,
/// and managers answering accordingly.
pub async fn healthy_cluster(extra_annotations: Value) -> (FakeApi, FakeManagers) {
    healthy_cluster_with(extra_annotations, true).await
}

/// `healthy_cluster`, optionally without its Secret.
pub async fn healthy_cluster_with(extra_annotations: Value, with_secret: bool) -> (FakeApi, FakeManagers) {
    let api = FakeApi::new();
    let mut cluster = cluster_json("og", json!({"instances": 3}));
    cluster["metadata"]["annotations"] = extra_annotations;
    cluster["status"] = json!({
        "phase": "Healthy", "currentPrimary": "og-0", "targetPrimary": "og-0", "initialized": true,
        "readyInstances": 3,
        "instances": [
            {"name": "og-0", "role": "primary", "ready": true},
            {"name": "og-1", "role": "standby", "ready": true},
            {"name": "og-2", "role": "standby", "ready": true},
        ],
    });
    let stored = api.insert(&cluster_path(NS, "og"), cluster);
    let typed: OpenGaussCluster = serde_json::from_value(stored).expect("cluster");
    let managers = FakeManagers::start(&api, "og", 3).await;
    // The pods as this operator makes them: none is outdated.
    let opts = options(managers.port);
    if with_secret {
        use opengauss_operator::platform::kubernetes::credentials::Credentials;
        let creds = Credentials::generate(typed.spec.engine);
        let secret = opengauss_operator::platform::kubernetes::builders::secret(&typed, &creds);
        let mut secret = serde_json::to_value(secret).expect("secret json");
        let data: serde_json::Map<String, Value> =
            creds.entries().into_iter().map(|(k, v)| (k, json!(base64_like::encode(v.as_bytes())))).collect();
        secret.as_object_mut().expect("object").remove("stringData");
        secret["data"] = Value::Object(data);
        api.insert("/api/v1/namespaces/apps/secrets/og-credentials", secret);
    }
    for k in 0..3u8 {
        let instance = format!("og-{k}");
        let role = if k == 0 { "primary" } else { "standby" };
        let role = opengauss_operator::platform::kubernetes::roles::RoleLabel::parse(role).expect("role");
        let pod = opengauss_operator::platform::kubernetes::builders::pod(&typed, &instance, role, &opts);
        let mut pod = serde_json::to_value(pod).expect("pod json");
        pod["status"] = json!({"phase": "Running", "podIP": manager_ip(k).to_string()});
        api.insert(&pod_path(NS, &instance), pod);
    }
    managers.set("og-0", Some(primary_report("og-0", &["og-1", "og-2"], 0x5000000)));
    managers.set("og-1", Some(standby_report("og-1", 0x5000000)));
    managers.set("og-2", Some(standby_report("og-2", 0x4fff000)));
    (api, managers)
}

/// The spec changes (a standby fenced) after a pass: the next status write meets a new
/// resource version, reads the object, sees its own status there, and writes again.
pub async fn scenario_spec_change_between_passes() -> (FakeApi, Arc<Context>, FakeManagers) {
    let (api, managers) = healthy_cluster(json!({})).await;
    let ctx = context(&api, managers.port);
    reconcile_once(&api, &ctx, "og").await.expect("first pass");
    api.modify(&cluster_path(NS, "og"), |c| {
        c["spec"]["fencedInstances"] = json!(["og-2"]);
        c["metadata"]["generation"] = json!(2);
    });
    reconcile_once(&api, &ctx, "og").await.expect("pass after the spec change");
    (api, ctx, managers)
}

/// The primary's pod is being deleted (its node drained, a user's `kubectl delete pod`): the
/// operator fails over.
pub async fn scenario_failover() -> (FakeApi, Arc<Context>, FakeManagers) {
    let (api, managers) = healthy_cluster(json!({})).await;
    api.modify(&pod_path(NS, "og-0"), |p| {
        p["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:10:00Z");
    });
    managers.set("og-0", None);
    let ctx = context(&api, managers.port);
    reconcile_once(&api, &ctx, "og").await.expect("reconcile");
    (api, ctx, managers)
}

/// A planned switchover requested through the annotation.
pub async fn scenario_switchover() -> (FakeApi, Arc<Context>, FakeManagers) {
    let (api, managers) = healthy_cluster(json!({"ha.opengauss.dev/switchover-to": "og-1"})).await;
    let ctx = context(&api, managers.port);
    reconcile_once(&api, &ctx, "og").await.expect("reconcile");
    (api, ctx, managers)
}

/// The cluster shrinks from three instances to two.
pub async fn scenario_scale_down() -> (FakeApi, Arc<Context>, FakeManagers) {
    let (api, managers) = healthy_cluster(json!({})).await;
    api.insert(
        "/api/v1/namespaces/apps/persistentvolumeclaims/og-2-data",
        json!({"metadata": {"name": "og-2-data", "labels": {
            "ha.opengauss.dev/cluster": "og", "ha.opengauss.dev/instance": "og-2",
            "app.kubernetes.io/managed-by": "opengauss-operator"},
            "ownerReferences": [{"apiVersion": "ha.opengauss.dev/v1alpha1", "kind": "OpenGaussCluster",
                "name": "og", "uid": "placeholder", "controller": true}]}}),
    );
    let uid = api.get(&cluster_path(NS, "og")).expect("cluster")["metadata"]["uid"].clone();
    api.modify("/api/v1/namespaces/apps/persistentvolumeclaims/og-2-data", |p| {
        p["metadata"]["ownerReferences"][0]["uid"] = uid;
    });
    api.modify(&cluster_path(NS, "og"), |c| {
        c["spec"]["instances"] = json!(2);
        c["metadata"]["generation"] = json!(2);
    });
    let ctx = context(&api, managers.port);
    reconcile_once(&api, &ctx, "og").await.expect("reconcile");
    (api, ctx, managers)
}

/// A spec the API server accepted but the operator refuses: reconciled twice.
pub async fn scenario_invalid_spec() -> (FakeApi, Arc<Context>) {
    let api = FakeApi::new();
    api.insert(
        &cluster_path(NS, "bad"),
        cluster_json("bad", json!({"instances": 3, "replication": {"synchronous": {"number": 3}}})),
    );
    let ctx = context(&api, 8000);
    reconcile_once(&api, &ctx, "bad").await.expect("reconcile");
    // Again, with the status as written: nothing to do.
    reconcile_once(&api, &ctx, "bad").await.expect("reconcile again");
    (api, ctx)
}

/// An object that does not deserialise at all.
pub async fn scenario_malformed() -> (FakeApi, Arc<Context>) {
    let api = FakeApi::new();
    api.insert(&cluster_path(NS, "weird"), cluster_json("weird", json!({"instances": "three"})));
    let ctx = context(&api, 8000);
    reconcile_once(&api, &ctx, "weird").await.expect("reconcile");
    (api, ctx)
}

/// A cluster being deleted, after it had been reconciled once.
pub async fn scenario_deletion() -> (FakeApi, Arc<Context>) {
    let (api, ctx, _) = scenario_first_reconcile().await;
    api.modify(&cluster_path(NS, "og"), |c| {
        c["metadata"]["deletionTimestamp"] = json!("2025-01-01T01:00:00Z");
    });
    api.clear_journal();
    reconcile_once(&api, &ctx, "og").await.expect("reconcile");
    (api, ctx)
}

/// A standby that suddenly accepts writes (split brain): reconciled twice.
pub async fn scenario_stray_primary() -> (FakeApi, Arc<Context>, FakeManagers) {
    let (api, managers) = healthy_cluster(json!({})).await;
    managers.set("og-2", Some(primary_report("og-2", &[], 0x5000000)));
    let ctx = context(&api, managers.port);
    reconcile_once(&api, &ctx, "og").await.expect("reconcile");
    reconcile_once(&api, &ctx, "og").await.expect("reconcile again");
    (api, ctx, managers)
}

// -------------------------------------------------------------------------------------------
// The whole operator (`run`) against the fake

pub const CRD_PATH: &str =
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/opengaussclusters.ha.opengauss.dev";
pub const LEASE_PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/opengauss-operator-system/leases/opengauss-operator-leader";

pub fn established_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "opengaussclusters.ha.opengauss.dev"},
        "spec": {"group": "ha.opengauss.dev", "scope": "Namespaced",
                 "names": {"plural": "opengaussclusters", "kind": "OpenGaussCluster"}, "versions": []},
        "status": {"conditions": [{"type": "Established", "status": "True"}]},
    })
}

/// The API server as the operator finds it after `kubectl apply` of deploy/ and two clusters,
/// one of them malformed; `with_crd` false leaves the CRD out.
pub fn operator_world(with_crd: bool) -> FakeApi {
    let api = FakeApi::new();
    if with_crd {
        api.insert(CRD_PATH, established_crd());
    }
    for replica in ["op-a", "op-b"] {
        api.insert(
            &pod_path(OPERATOR_NS, replica),
            json!({"metadata": {"name": replica}, "spec": {"containers": [
                {"name": "operator", "image": "registry.example/opengauss-operator:1.2.3"}]}}),
        );
    }
    api.insert(&cluster_path(NS, "og"), cluster_json("og", json!({"instances": 3})));
    api.insert(&cluster_path(NS, "weird"), cluster_json("weird", json!({"instances": "three"})));
    api
}

/// One operator replica running `run` against the fake.
pub struct Replica {
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Replica {
    pub fn start(api: &FakeApi, who: &str) -> Self {
        use opengauss_operator::platform::kubernetes::run::{RunArgs, run_with};
        let client = api.client_as(who);
        let args = RunArgs::for_tests(who, OPERATOR_NS);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(run_with(client, args, async move {
            let _ = rx.await;
        }));
        Self { handle, stop: Some(tx) }
    }

    /// Asks for a graceful shutdown and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("stops in time")
            .expect("joins")
    }
}

pub fn lease_holder(api: &FakeApi) -> Option<String> {
    api.get(LEASE_PATH).and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
}

/// One replica runs until both clusters are handled, then stops cleanly.
pub async fn scenario_operator_run() -> FakeApi {
    let api = operator_world(true);
    let a = Replica::start(&api, "op-a");
    eventually("the valid cluster reconciled", Duration::from_secs(20), || {
        api.get("/api/v1/namespaces/apps/pods/og-2").is_some()
    })
    .await;
    eventually("the malformed cluster reported", Duration::from_secs(20), || {
        api.get(&cluster_path(NS, "weird")).is_some_and(|c| c["status"]["phase"] == "InvalidSpec")
    })
    .await;
    a.stop().await.expect("clean shutdown");
    api
}
