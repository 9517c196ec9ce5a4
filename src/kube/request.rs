//! What a Kubernetes API request is, for the audit log, and the headers the
//! gateway sends in its place: the user's own credentials and any
//! impersonation they ask for are removed, and the gateway's identity for
//! them is added (the Kubernetes user impersonation API,
//! <https://kubernetes.io/docs/reference/access-authn-authz/authentication/#user-impersonation>).

use hyper::Method;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// Who the request is from, as the API server is told.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `Impersonate-User`: the account's email.
    pub user: String,
    /// `Impersonate-Group`, each: `gatehouse:PROJECT:ROLE`, `gatehouse:authenticated`.
    pub groups: Vec<String>,
    /// `Impersonate-Extra-gatehouse-session`: the SSH session id.
    pub session: String,
    /// `X-Forwarded-For`: the SSH client's address, which the API server's
    /// audit log records among the request's source IPs.
    pub client_ip: Option<String>,
}

impl Identity {
    /// The identity of `email` acting as `role` in `project` on session `session`.
    pub fn new(email: &str, project: &str, role: crate::model::Role, session: &str) -> Identity {
        Identity {
            user: email.to_string(),
            groups: vec![
                format!("gatehouse:{project}:{}", role.as_str()),
                "gatehouse:authenticated".to_string(),
            ],
            session: session.to_string(),
            client_ip: None,
        }
    }
}

/// Headers that are about one hop, never passed on (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a request header is one the user may not set: credentials,
/// impersonation, and the identity headers of front proxies an API server
/// or a proxy before it may trust (`--requestheader-*`, usually
/// `X-Remote-*`; `X-Forwarded-User`). `_` counts as `-`, as some proxies
/// read it.
fn is_identity_header(name: &str) -> bool {
    let name = name.replace('_', "-");
    name == "authorization"
        || name == "cookie"
        || name.starts_with("impersonate-")
        || name.starts_with("x-remote-")
        || name.starts_with("x-forwarded-")
        || name == "forwarded"
        || name == "x-real-ip"
        || name == "remote-user"
        || name.starts_with("x-auth-request-")
        || name.starts_with("x-webauth-")
        || name.starts_with("x-authenticated-")
        || name.contains("client-cert")
}

/// The WebSocket subprotocol in which a client may send a bearer token to
/// the API server instead of `Authorization`.
const WEBSOCKET_TOKEN: &str = "base64url.bearer.authorization.k8s.io.";

/// `Sec-WebSocket-Protocol` without any token the user put in it.
fn without_websocket_tokens(headers: &mut HeaderMap) {
    let name = hyper::header::SEC_WEBSOCKET_PROTOCOL;
    let offered: Vec<String> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty() && !p.starts_with(WEBSOCKET_TOKEN))
        .collect();
    headers.remove(&name);
    if !offered.is_empty()
        && let Ok(v) = HeaderValue::from_str(&offered.join(", "))
    {
        headers.insert(name, v);
    }
}

/// Rewrites a request's headers for the API server: drops hop-by-hop
/// headers (keeping `Connection: Upgrade` and `Upgrade` for an upgrade),
/// drops every identity header the user sent, and adds `identity`'s
/// impersonation headers and, with a token credential, `Authorization`.
pub fn rewrite_request(
    headers: &mut HeaderMap,
    identity: &Identity,
    bearer: Option<&str>,
    upgrade: bool,
) {
    let upgrade_to = headers.get(hyper::header::UPGRADE).cloned();
    let mut connection_named: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(hyper::header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            connection_named.extend(
                s.split(',')
                    .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok()),
            );
        }
    }
    let drop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let s = n.as_str();
            HOP_BY_HOP.contains(&s) || is_identity_header(s) || connection_named.contains(n)
        })
        .cloned()
        .collect();
    for name in drop {
        headers.remove(&name);
    }
    headers.remove(hyper::header::HOST);
    without_websocket_tokens(headers);
    if upgrade && let Some(to) = upgrade_to {
        headers.insert(
            hyper::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        );
        headers.insert(hyper::header::UPGRADE, to);
    }
    let value = |s: &str| HeaderValue::from_str(s).ok();
    if let Some(v) = value(&identity.user) {
        headers.insert("impersonate-user", v);
    }
    for g in &identity.groups {
        if let Some(v) = value(g) {
            headers.append("impersonate-group", v);
        }
    }
    if let Some(v) = value(&identity.session) {
        headers.insert("impersonate-extra-gatehouse-session", v);
    }
    if let Some(v) = identity.client_ip.as_deref().and_then(value) {
        headers.insert("x-forwarded-for", v);
    }
    if let Some(token) = bearer
        && let Some(mut v) = value(&format!("Bearer {token}"))
    {
        v.set_sensitive(true);
        headers.insert(hyper::header::AUTHORIZATION, v);
    }
}

/// Drops hop-by-hop headers from a response (not from a `101`, whose
/// `Connection` and `Upgrade` the client needs).
pub fn rewrite_response(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// A request as the Kubernetes API server classifies it (its RequestInfo):
/// the verb, and what it is about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// get, list, watch, create, update, patch, delete, deletecollection,
    /// or the lower-case HTTP method for non-resource paths.
    pub verb: String,
    pub namespace: Option<String>,
    pub resource: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl RequestInfo {
    /// Classifies `method path?query` as kube-apiserver does for
    /// `/api/v1/...` and `/apis/GROUP/VERSION/...`.
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
        // As the API server reads them: the query decoded, and `watch` true
        // unless its first value is `false` or `0` (its
        // Convert_Slice_string_To_bool), an empty value included.
        let mut watch = query.is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "watch")
                .is_some_and(|(_, v)| !v.eq_ignore_ascii_case("false") && v != "0")
        });
        let decoded: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(|p| {
                percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let mut parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
        // The legacy `/api/v1/watch/...` form.
        let at = match parts.first() {
            Some(&"api") => 2,
            Some(&"apis") => 3,
            _ => usize::MAX,
        };
        if parts.get(at) == Some(&"watch") {
            parts.remove(at);
            watch = true;
        }
        let rest: &[&str] = match parts.as_slice() {
            ["api", _version, rest @ ..] => rest,
            ["apis", _group, _version, rest @ ..] => rest,
            _ => {
                return RequestInfo {
                    verb: method.as_str().to_ascii_lowercase(),
                    ..RequestInfo::default()
                };
            }
        };
        let mut info = RequestInfo::default();
        let rest: &[&str] = match rest {
            // `namespaces/NAME` alone is the namespace object itself.
            ["namespaces", ns, more @ ..] if !more.is_empty() => {
                info.namespace = Some(ns.to_string());
                more
            }
            other => other,
        };
        if let Some(r) = rest.first() {
            info.resource = Some(r.to_string());
        }
        if let Some(n) = rest.get(1) {
            info.name = Some(n.to_string());
        }
        if let Some(s) = rest.get(2) {
            info.subresource = Some(s.to_string());
        }
        let named = info.name.is_some();
        info.verb = match *method {
            Method::GET | Method::HEAD if watch => "watch",
            Method::GET | Method::HEAD if named => "get",
            Method::GET | Method::HEAD => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if named => "delete",
            Method::DELETE => "deletecollection",
            _ => "",
        }
        .to_string();
        if info.verb.is_empty() {
            info.verb = method.as_str().to_ascii_lowercase();
        }
        info
    }

    /// `exec`, `attach` or `portforward` of a pod: a stream with a duration.
    pub fn pod_stream(&self) -> Option<&str> {
        match (self.resource.as_deref(), self.subresource.as_deref()) {
            (Some("pods"), Some(s @ ("exec" | "attach" | "portforward"))) => Some(s),
            _ => None,
        }
    }

    /// `NAMESPACE/NAME` of what the request is about, for the audit log.
    pub fn object(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            (None, Some(n)) => n.clone(),
            (Some(ns), None) => ns.clone(),
            (None, None) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn info(m: Method, p: &str, q: Option<&str>) -> RequestInfo {
        RequestInfo::parse(&m, p, q)
    }

    #[test]
    fn verbs_follow_the_api_server() {
        let pods = "/api/v1/namespaces/default/pods";
        let deployment = "/apis/apps/v1/namespaces/x/deployments/d";
        for (method, path, query, verb) in [
            (Method::GET, pods, Some("limit=500"), "list"),
            (Method::GET, pods, Some("watch=True"), "watch"),
            (Method::GET, pods, Some("watch=false"), "list"),
            (Method::GET, pods, Some("watch=0"), "list"),
            (Method::GET, pods, Some("watch"), "watch"),
            (Method::GET, pods, Some("watch=yes"), "watch"),
            (Method::GET, pods, Some("watch=0&watch=1"), "list"),
            (Method::GET, pods, Some("%77atch=%74rue"), "watch"),
            (
                Method::GET,
                "/api/v1/watch/namespaces/a/pods",
                None,
                "watch",
            ),
            (
                Method::GET,
                pods,
                Some("watch=1&resourceVersion=1"),
                "watch",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/default/pods/p",
                None,
                "get",
            ),
            (Method::POST, pods, None, "create"),
            (Method::DELETE, pods, None, "deletecollection"),
            (Method::PATCH, deployment, None, "patch"),
            (Method::GET, "/version", None, "get"),
        ] {
            assert_eq!(
                info(method.clone(), path, query).verb,
                verb,
                "{method} {path}?{query:?}"
            );
        }
        let exec = info(Method::GET, "/api/v1/namespaces/a/pods/p/%65xec", None);
        assert_eq!(exec.pod_stream(), Some("exec"));
        assert_eq!(
            info(Method::GET, "/api/v1/namespaces/kube-system", None)
                .resource
                .as_deref(),
            Some("namespaces")
        );
        let exec = info(
            Method::GET,
            "/api/v1/namespaces/default/pods/trainer-0/exec",
            Some("command=sh"),
        );
        assert_eq!(exec.pod_stream(), Some("exec"));
        assert_eq!(exec.object(), "default/trainer-0");
        let logs = info(
            Method::GET,
            "/api/v1/namespaces/default/pods/trainer-0/log",
            Some("follow=true"),
        );
        assert_eq!(logs.pod_stream(), None);
        assert_eq!(logs.subresource.as_deref(), Some("log"));
    }

    #[test]
    fn the_users_identity_headers_never_pass() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer stolen"));
        h.insert("Impersonate-User", HeaderValue::from_static("root"));
        h.append(
            "impersonate-group",
            HeaderValue::from_static("system:masters"),
        );
        h.insert("impersonate-uid", HeaderValue::from_static("0"));
        h.insert("impersonate-extra-scopes", HeaderValue::from_static("x"));
        h.insert("x-remote-user", HeaderValue::from_static("root"));
        h.insert("impersonate_user", HeaderValue::from_static("root"));
        h.insert("x_remote_group", HeaderValue::from_static("system:masters"));
        h.insert("x-forwarded-user", HeaderValue::from_static("root"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        h.insert("x-real-ip", HeaderValue::from_static("10.9.9.9"));
        h.insert("x-forwarded-client-cert", HeaderValue::from_static("x"));
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(
                "v5.channel.k8s.io, base64url.bearer.authorization.k8s.io.c3RvbGVu",
            ),
        );
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-sneaky"),
        );
        h.insert("x-sneaky", HeaderValue::from_static("1"));
        h.insert("accept", HeaderValue::from_static("application/json"));
        let mut id = Identity::new("alice@example.com", "train", Role::Admin, "s1");
        id.client_ip = Some("192.0.2.7".into());
        rewrite_request(&mut h, &id, Some("gw-token"), false);
        assert_eq!(h["impersonate-user"], "alice@example.com");
        let groups: Vec<_> = h.get_all("impersonate-group").iter().collect();
        assert_eq!(groups, ["gatehouse:train:admin", "gatehouse:authenticated"]);
        assert_eq!(h["impersonate-extra-gatehouse-session"], "s1");
        assert_eq!(h["authorization"], "Bearer gw-token");
        assert_eq!(h["sec-websocket-protocol"], "v5.channel.k8s.io");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        for gone in [
            "impersonate-uid",
            "impersonate-extra-scopes",
            "x-remote-user",
            "impersonate_user",
            "x_remote_group",
            "x-forwarded-user",
            "x-real-ip",
            "x-forwarded-client-cert",
            "proxy-authorization",
            "connection",
            "x-sneaky",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(h["accept"], "application/json");
        // With a client certificate there is no Authorization at all.
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer stolen"));
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        rewrite_request(&mut h, &id, None, true);
        assert!(h.get("authorization").is_none());
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "Upgrade");
    }
}
