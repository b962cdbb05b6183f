//! Who is calling, whether they may, how often, and the audit trail: one
//! layer around every route (`protect`).
//!
//! For each request, in order:
//! 1. **Request id**: a sane `x-request-id` from the client is kept, any
//!    other is replaced by a random one; it is echoed on the answer and named
//!    in the audit event.
//! 2. **Caller** ([`identify`]): `Authorization: Bearer <key>` (the key's
//!    SHA-256 compared with every configured digest in constant time), else
//!    the TLS client certificate's subject CN mapped in
//!    `server.auth.certificates`, else anonymous.
//! 3. **Per-client rate** (`limit.rs`): 429 with `Retry-After`. Open routes
//!    (health, and `/metrics` unless protected) are never limited.
//! 4. **Scope** ([`need`], [`decide`]): 401 without a valid credential (the
//!    same answer for a missing and a wrong key), 403 with too small a scope.
//!    With `server.auth.enabled` false, routes that change something answer
//!    loopback clients only.
//! 5. **Audit**: every call that is not a read (any method but GET, HEAD,
//!    OPTIONS), allowed or refused, is an `audit` event naming the
//!    principal, route, outcome, status and request id. Never a key.
//!
//! The scope of every route is decided in one place, [`need`]: reads need
//! `read`, anything else needs `operate`, and [`ROUTE_SCOPES`] lists the
//! routes that differ. A new route that needs more than its method's
//! default gets one line there.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use prometheus::{IntCounter, IntCounterVec, Opts};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::limit::{self, ClientLimiter};
use super::tls::PeerCert;
use crate::config::{ApiKey, Auth, Scope};
use crate::events::{Audit, ManagerEvent, What};
use crate::state::AppState;

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anybody (health, and `/metrics` unless `metrics_require_auth`).
    Open,
    Scope(Scope),
}

/// Routes whose scope is not their method's default (reads `read`, anything
/// else `operate`): `(method, route pattern as written in the router, need)`.
pub const ROUTE_SCOPES: &[(&str, &str, Need)] = &[
    // The whole configuration, every pool: an administrator's action.
    ("POST", "/api/v1/config/reload", Need::Scope(Scope::Admin)),
    // The web page and its assets hold no data (the page reads the API with
    // the key it asks for), and must load for the page to ask for a key.
    ("GET", "/", Need::Open),
    ("GET", "/assets/{name}", Need::Open),
    ("GET", "/favicon.ico", Need::Open),
];

/// Liveness and readiness, open unless `server.auth.health_require_auth`.
const HEALTH_ROUTES: &[&str] = &[
    "/health",
    "/health/live",
    "/health/ready",
    "/api/v1/health",
    "/api/v1/health/live",
    "/api/v1/health/ready",
];

/// Whether `method` only reads.
pub fn is_read(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

/// The scope a request needs, from its method and matched route (None when
/// no route matched: with authentication, the method's default, so an
/// unknown path tells an anonymous caller nothing).
pub fn need(method: &Method, route: Option<&str>, auth: &Auth) -> Need {
    let read = is_read(method);
    let opt_in = |required: bool| {
        if required {
            Need::Scope(Scope::Read)
        } else {
            Need::Open
        }
    };
    match route {
        Some(r) if read && HEALTH_ROUTES.contains(&r) => return opt_in(auth.health_require_auth),
        Some("/metrics") if read => return opt_in(auth.metrics_require_auth),
        Some(r) => {
            if let Some((_, _, n)) = ROUTE_SCOPES
                .iter()
                .find(|(m, p, _)| *p == r && *m == method.as_str())
            {
                return *n;
            }
        }
        // Without authentication a path that is not a route is simply not
        // found, whoever asks.
        None if !auth.enabled => return Need::Open,
        None => {}
    }
    if read {
        Need::Scope(Scope::Read)
    } else {
        Need::Scope(Scope::Operate)
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Key,
    Certificate,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credential.
    Anonymous,
    /// A credential that names nobody: a wrong key or a malformed header.
    Invalid,
    /// A known principal. `scope` is None for a certificate signed by the
    /// client CA whose common name no mapping names.
    Principal {
        name: String,
        via: Via,
        scope: Option<Scope>,
    },
}

/// The token of an `Authorization: Bearer <token>` header value (the scheme
/// in any case, RFC 7235); None for anything else.
pub fn bearer(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, token) = text.trim().split_once(' ')?;
    let token = token.trim_start();
    let ok = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(token)
}

/// The key whose digest is the SHA-256 of `token`. Every configured digest
/// is compared, each in constant time, so the time taken does not depend on
/// which key (if any) matched or how much of it did.
pub fn find_key<'a>(token: &str, keys: &'a [ApiKey]) -> Option<&'a ApiKey> {
    let digest = Sha256::digest(token.as_bytes());
    let mut found = None;
    for k in keys {
        if bool::from(k.sha256[..].ct_eq(&digest[..])) {
            found = Some(k);
        }
    }
    found
}

/// Identifies the caller from its headers and its TLS client certificate's
/// common name. A bearer token, when sent, decides alone.
pub fn identify(headers: &HeaderMap, cert_cn: Option<&str>, auth: &Auth) -> Caller {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (None, _) => {}
        (Some(v), None) => {
            return match bearer(v.as_bytes()).and_then(|t| find_key(t, &auth.keys)) {
                Some(k) => Caller::Principal {
                    name: k.name.clone(),
                    via: Via::Key,
                    scope: Some(k.scope),
                },
                None => Caller::Invalid,
            }
        }
        // Two credentials: which one counts would be a guess.
        (Some(_), Some(_)) => return Caller::Invalid,
    }
    let Some(cn) = cert_cn else {
        return Caller::Anonymous;
    };
    match auth.certificates.iter().find(|c| c.common_name == cn) {
        Some(c) => Caller::Principal {
            name: c.name.clone(),
            via: Via::Certificate,
            scope: Some(c.scope),
        },
        None => Caller::Principal {
            name: format!("cert:{}", shorten(cn, 64)),
            via: Via::Certificate,
            scope: None,
        },
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// 401: no credential, or one that names nobody.
    Unauthenticated,
    /// 403: a principal without the scope the route needs.
    Forbidden(Scope),
    /// 403: a change asked from beyond loopback while authentication is off.
    LoopbackOnly,
}

impl Verdict {
    /// The audit trail's outcome.
    pub fn outcome(self) -> &'static str {
        match self {
            Verdict::Allow => "allowed",
            Verdict::Unauthenticated => "unauthenticated",
            Verdict::Forbidden(_) => "forbidden",
            Verdict::LoopbackOnly => "loopback_only",
        }
    }
}

/// Decides a request: the route's need, the caller, whether authentication
/// is on, and whether the client is on loopback.
pub fn decide(need: Need, caller: &Caller, auth_enabled: bool, loopback: bool) -> Verdict {
    let Need::Scope(scope) = need else {
        return Verdict::Allow;
    };
    if !auth_enabled {
        // Without authentication anybody who reaches the address may read;
        // changes are kept to this host's own users.
        return if scope == Scope::Read || loopback {
            Verdict::Allow
        } else {
            Verdict::LoopbackOnly
        };
    }
    match caller {
        Caller::Anonymous | Caller::Invalid => Verdict::Unauthenticated,
        Caller::Principal {
            scope: Some(have), ..
        } if *have >= scope => Verdict::Allow,
        Caller::Principal { .. } => Verdict::Forbidden(scope),
    }
}

/// The answer to a refused request, in the API's error shape.
pub fn refusal(v: Verdict) -> Response {
    match v {
        Verdict::Allow => ApiError::internal("allowed request refused").into_response(),
        Verdict::Unauthenticated => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this route needs an API key (Authorization: Bearer <key>) or a client certificate",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"phpfpm-manager\""),
            );
            r
        }
        Verdict::Forbidden(scope) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this route needs the {scope} scope"),
        )
        .into_response(),
        Verdict::LoopbackOnly => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "changes are served to loopback clients only while server.auth.enabled is false",
        )
        .into_response(),
    }
}

/// 429 with `Retry-After`.
fn rate_limited(wait: std::time::Duration) -> Response {
    let secs = limit::retry_after_secs(wait);
    let mut r = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from this client; retry in {secs} s"),
    )
    .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// The request id header, read and answered.
pub const REQUEST_ID: &str = "x-request-id";

/// The client's request id if it is sane (1 to 128 of `[A-Za-z0-9._:-]`),
/// else a new random one.
pub fn request_id(given: Option<&HeaderValue>) -> String {
    let sane = |s: &&str| {
        (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    };
    match given.and_then(|v| v.to_str().ok()).filter(sane) {
        Some(s) => s.to_owned(),
        None => new_request_id(),
    }
}

fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: unique within the process is enough for an id.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&n.to_be_bytes());
        bytes[8..].copy_from_slice(&u64::from(std::process::id()).to_be_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The pool a request is about: the path segment where the route has
/// `{pool}`, if it is a valid pool name.
pub fn pool_of(route: &str, path: &str) -> Option<String> {
    let idx = route.split('/').position(|seg| seg == "{pool}")?;
    let seg = path.split('/').nth(idx)?;
    fpm_core::PoolName::new(seg)
        .ok()
        .map(|p| p.as_str().to_owned())
}

/// `s` cut to at most `max` bytes on a character boundary.
fn shorten(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `phpfpm_manager_http_refused_total{reason}`: one series set for the
/// process, registered with every router built (a rebuilt router keeps
/// counting into the same series).
fn refused_counter() -> &'static IntCounterVec {
    static C: OnceLock<IntCounterVec> = OnceLock::new();
    C.get_or_init(|| {
        let c = IntCounterVec::new(
            Opts::new(
                "phpfpm_manager_http_refused_total",
                "HTTP requests refused before their handler, by reason (unauthenticated, forbidden, loopback_only, rate_limited).",
            ),
            &["reason"],
        )
        .expect("static counter options are valid");
        for r in ["unauthenticated", "forbidden", "loopback_only", "rate_limited"] {
            c.with_label_values(&[r]);
        }
        c
    })
}

/// `phpfpm_manager_audit_suppressed_total`.
fn suppressed_counter() -> &'static IntCounter {
    static C: OnceLock<IntCounter> = OnceLock::new();
    C.get_or_init(|| {
        IntCounter::new(
            "phpfpm_manager_audit_suppressed_total",
            "Rate-limited changes not written to the audit trail one by one (a client over its limit leaves at most one audit event a second).",
        )
        .expect("static counter options are valid")
    })
}

/// What the layer keeps between requests.
pub struct Guard {
    state: Arc<AppState>,
    limiter: ClientLimiter,
    /// A client hammering past its limit leaves one audit event a second,
    /// not one per refused request.
    audit_limiter: ClientLimiter,
}

impl Guard {
    /// The guard for the router over `state`, with the rates configured now.
    pub fn new(state: &Arc<AppState>) -> Arc<Guard> {
        let cfg = state.config();
        let lim = &cfg.server.limits;
        for c in [
            Box::new(refused_counter().clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(suppressed_counter().clone()),
        ] {
            // Already registered by an earlier router over the same state.
            let _ = state.metrics.register(c);
        }
        Arc::new(Guard {
            state: state.clone(),
            limiter: ClientLimiter::new(lim.client_requests_per_second, lim.client_burst),
            audit_limiter: ClientLimiter::new(1, 1),
        })
    }
}

/// Puts the guard around every route of `app` (and its fallback).
pub fn protect(app: Router, guard: Arc<Guard>) -> Router {
    app.layer(axum::middleware::from_fn_with_state(guard, check))
}

async fn check(State(g): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    let id = request_id(req.headers().get(REQUEST_ID));
    let id_value = HeaderValue::from_str(&id).ok();
    if let Some(v) = &id_value {
        req.headers_mut().insert(REQUEST_ID, v.clone());
    }
    let cfg = g.state.config();
    let auth = &cfg.server.auth;
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let caller = if auth.enabled {
        let cn = req
            .extensions()
            .get::<PeerCert>()
            .and_then(|p| p.common_name.as_deref());
        identify(req.headers(), cn, auth)
    } else {
        Caller::Anonymous
    };
    let need = need(&method, route.as_deref(), auth);
    let loopback = peer.is_some_and(is_loopback);
    let principal = match &caller {
        Caller::Principal { name, .. } => Some(name.as_str()),
        _ => None,
    };
    let client = limit::client_key(principal, peer);

    let (outcome, mut resp) = 'answer: {
        if need != Need::Open {
            if let Some(key) = &client {
                if let Err(wait) = g.limiter.check(key) {
                    break 'answer ("rate_limited", rate_limited(wait));
                }
            }
        }
        match decide(need, &caller, auth.enabled, loopback) {
            Verdict::Allow => ("allowed", next.run(req).await),
            v => (v.outcome(), refusal(v)),
        }
    };
    if outcome != "allowed" {
        refused_counter().with_label_values(&[outcome]).inc();
    }
    if !is_read(&method) {
        let record = outcome != "rate_limited"
            || client
                .as_ref()
                .is_none_or(|k| g.audit_limiter.check(k).is_ok());
        if record {
            let route = route.unwrap_or_else(|| shorten(&path, 256).to_owned());
            let pool = pool_of(&route, &path);
            let (principal, via) = match caller {
                Caller::Principal { name, via, .. } => (
                    name,
                    match via {
                        Via::Key => "key",
                        Via::Certificate => "certificate",
                    },
                ),
                Caller::Invalid => ("invalid_credential".to_owned(), "none"),
                Caller::Anonymous => ("anonymous".to_owned(), "none"),
            };
            let audit = Audit {
                principal,
                via,
                method: method.as_str().to_owned(),
                route,
                outcome,
                status: resp.status().as_u16(),
                request_id: id,
                client: peer.map(|ip| ip.to_string()),
            };
            g.state.events.emit(ManagerEvent::new(
                pool.as_deref(),
                "api",
                What::Audit(Box::new(audit)),
            ));
        } else {
            suppressed_counter().inc();
        }
    }
    if let Some(v) = id_value {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Loopback, including IPv4 loopback written as an IPv6-mapped address.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        IpAddr::V4(v4) => v4.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientCert;

    fn key(name: &str, scope: Scope, secret: &str) -> ApiKey {
        ApiKey {
            name: name.into(),
            scope,
            sha256: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    fn auth() -> Auth {
        Auth {
            enabled: true,
            metrics_require_auth: false,
            health_require_auth: false,
            keys: vec![
                key("reader", Scope::Read, "pfm_r"),
                key("deployer", Scope::Operate, "pfm_o"),
                key("root", Scope::Admin, "pfm_a"),
            ],
            certificates: vec![ClientCert {
                common_name: "ci.example.com".into(),
                name: "ci".into(),
                scope: Scope::Operate,
            }],
        }
    }

    fn headers(authz: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in authz {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn every_route_has_one_need() {
        let a = auth();
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(need(&get, Some("/health/ready"), &a), Need::Open);
        assert_eq!(need(&get, Some("/api/v1/health"), &a), Need::Open);
        assert_eq!(need(&get, Some("/metrics"), &a), Need::Open);
        assert_eq!(
            need(&get, Some("/api/v1/pools"), &a),
            Need::Scope(Scope::Read)
        );
        assert_eq!(
            need(&post, Some("/api/v1/pools/{pool}/scaling"), &a),
            Need::Scope(Scope::Operate)
        );
        assert_eq!(
            need(&Method::DELETE, Some("/api/v1/pools/{pool}"), &a),
            Need::Scope(Scope::Operate)
        );
        assert_eq!(
            need(&post, Some("/api/v1/config/reload"), &a),
            Need::Scope(Scope::Admin)
        );
        // A POST to a health route is not a health check.
        assert_eq!(
            need(&post, Some("/health"), &a),
            Need::Scope(Scope::Operate)
        );
        // No route matched: the method's default.
        assert_eq!(need(&get, None, &a), Need::Scope(Scope::Read));
        assert_eq!(need(&post, None, &a), Need::Scope(Scope::Operate));
        let off = Auth {
            enabled: false,
            ..a.clone()
        };
        assert_eq!(need(&post, None, &off), Need::Open);
        assert_eq!(
            need(&post, Some("/api/v1/pools/{pool}/scaling"), &off),
            Need::Scope(Scope::Operate)
        );
        let protected = Auth {
            metrics_require_auth: true,
            health_require_auth: true,
            ..a
        };
        assert_eq!(
            need(&get, Some("/metrics"), &protected),
            Need::Scope(Scope::Read)
        );
        assert_eq!(
            need(&get, Some("/health/live"), &protected),
            Need::Scope(Scope::Read)
        );
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer(b"Bearer pfm_abc"), Some("pfm_abc"));
        assert_eq!(bearer(b"bearer   pfm_abc "), Some("pfm_abc"));
        assert_eq!(bearer(b"Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer a b"), None);
        assert_eq!(bearer(b"Bearer \xff"), None);
        assert_eq!(bearer(b"pfm_abc"), None);
    }

    #[test]
    fn callers_are_identified_by_key_then_certificate() {
        let a = auth();
        let principal = |name: &str, via, scope| Caller::Principal {
            name: name.into(),
            via,
            scope,
        };
        assert_eq!(identify(&headers(&[]), None, &a), Caller::Anonymous);
        assert_eq!(
            identify(&headers(&["Bearer pfm_o"]), None, &a),
            principal("deployer", Via::Key, Some(Scope::Operate))
        );
        assert_eq!(
            identify(&headers(&["Bearer pfm_wrong"]), None, &a),
            Caller::Invalid
        );
        assert_eq!(
            identify(&headers(&["Token pfm_o"]), None, &a),
            Caller::Invalid
        );
        assert_eq!(
            identify(&headers(&["Bearer pfm_r", "Bearer pfm_a"]), None, &a),
            Caller::Invalid
        );
        assert_eq!(
            identify(&headers(&[]), Some("ci.example.com"), &a),
            principal("ci", Via::Certificate, Some(Scope::Operate))
        );
        assert_eq!(
            identify(&headers(&[]), Some("stranger"), &a),
            principal("cert:stranger", Via::Certificate, None)
        );
        // A key sent over a mapped certificate's connection decides alone.
        assert_eq!(
            identify(&headers(&["Bearer pfm_r"]), Some("ci.example.com"), &a),
            principal("reader", Via::Key, Some(Scope::Read))
        );
    }

    #[test]
    fn the_scope_matrix() {
        let op = Need::Scope(Scope::Operate);
        let who = |scope| Caller::Principal {
            name: "p".into(),
            via: Via::Key,
            scope,
        };
        // (need, caller, expected) with authentication on.
        let cases = [
            (Need::Open, Caller::Anonymous, Verdict::Allow),
            (Need::Open, Caller::Invalid, Verdict::Allow),
            (
                Need::Scope(Scope::Read),
                Caller::Anonymous,
                Verdict::Unauthenticated,
            ),
            (
                Need::Scope(Scope::Read),
                Caller::Invalid,
                Verdict::Unauthenticated,
            ),
            (
                Need::Scope(Scope::Read),
                who(Some(Scope::Read)),
                Verdict::Allow,
            ),
            (
                op,
                who(Some(Scope::Read)),
                Verdict::Forbidden(Scope::Operate),
            ),
            (op, who(Some(Scope::Operate)), Verdict::Allow),
            (op, who(Some(Scope::Admin)), Verdict::Allow),
            (op, who(None), Verdict::Forbidden(Scope::Operate)),
            (
                Need::Scope(Scope::Admin),
                who(Some(Scope::Operate)),
                Verdict::Forbidden(Scope::Admin),
            ),
            (
                Need::Scope(Scope::Admin),
                who(Some(Scope::Admin)),
                Verdict::Allow,
            ),
        ];
        for (need, caller, want) in cases {
            for loopback in [true, false] {
                assert_eq!(
                    decide(need, &caller, true, loopback),
                    want,
                    "{need:?} {caller:?}"
                );
            }
        }
        // Authentication off: reads for all, changes from loopback only.
        assert_eq!(
            decide(Need::Scope(Scope::Read), &Caller::Anonymous, false, false),
            Verdict::Allow
        );
        assert_eq!(decide(op, &Caller::Anonymous, false, true), Verdict::Allow);
        assert_eq!(
            decide(op, &Caller::Anonymous, false, false),
            Verdict::LoopbackOnly
        );
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let v = HeaderValue::from_static("deploy-42.a:b");
        assert_eq!(request_id(Some(&v)), "deploy-42.a:b");
        let made = request_id(Some(&HeaderValue::from_static("no spaces please")));
        assert_eq!(made.len(), 32);
        assert!(made.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(request_id(None), request_id(None));
        let long = "a".repeat(129);
        assert_ne!(
            request_id(Some(&HeaderValue::from_str(&long).unwrap())),
            long
        );
    }

    #[test]
    fn the_pool_is_taken_from_the_route_when_valid() {
        assert_eq!(
            pool_of("/api/v1/pools/{pool}/scaling", "/api/v1/pools/app/scaling"),
            Some("app".into())
        );
        assert_eq!(
            pool_of(
                "/api/v1/pools/{pool}/scaling",
                "/api/v1/pools/a%00b/scaling"
            ),
            None
        );
        assert_eq!(
            pool_of("/api/v1/config/reload", "/api/v1/config/reload"),
            None
        );
        assert_eq!(shorten("héllo", 2), "h");
    }
}
