//! The operator's routes: actions that change what runs, each one typed
//! command and one typed answer.
//!
//! - `POST /api/v1/pools/{pool}/reload`: the pool's actor hands the pool over
//!   to a new master with its current spec (every worker starts afresh,
//!   nothing is dropped);
//! - `POST /api/v1/pools/{pool}/restart`: the same, with the pool's
//!   compiled-script cache emptied first, so nothing compiled before is reused;
//! - `POST /api/v1/config/reload`: the configuration is read again, exactly
//!   as on SIGHUP, by the manager's own reload loop;
//! - `POST /api/v1/events/annotations` with `text`: an operator's mark
//!   (a deploy), recorded as an `annotation` event. The same path's POST
//!   without `text` stays Grafana SimpleJSON's annotation query (answered by
//!   `history`), so this one is a layer that takes only its own bodies.
//!
//! Answers: 202 done, 400 bad input, 404 unknown pool, 409 a change to the
//! same target already in flight (or an observed pool), 415 not JSON, 422
//! refused (`php-fpm -t`'s message, or the config's problems), 503 not
//! ready. Who may call them is the `auth` layer's decision (the `operate`
//! scope, `admin` for the config reload; loopback clients only while
//! authentication is off), as for every route.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use super::error::ApiError;
use crate::events::{ManagerEvent, What};
use crate::pool::{MasterAction, MasterError, PoolHandle};
use crate::state::{AppState, ReloadOutcome};
use crate::supervisor::ApplyError;

/// The path shared by Grafana's annotation query and operators' annotations.
pub const ANNOTATIONS: &str = "/api/v1/events/annotations";
/// Longest `reason` or annotation `text` accepted, in characters.
const MAX_TEXT: usize = 1000;
const MAX_TAGS: usize = 16;
const MAX_TAG: usize = 64;
/// How much of a name an error message repeats (a name can be 10 KB).
const SHOWN: usize = 64;

/// Adds the operator's routes to the API router `app` (which must already
/// hold the history routes) and the layer that takes operators'
/// annotations off Grafana's annotation path.
pub fn extend(app: Router, state: Arc<AppState>) -> Router {
    let ops = Arc::new(Operate {
        state: state.clone(),
        in_flight: Mutex::default(),
    });
    let routes = Router::new()
        .route("/api/v1/pools/{pool}/reload", post(pool_reload))
        .route("/api/v1/pools/{pool}/restart", post(pool_restart))
        .route("/api/v1/config/reload", post(config_reload))
        .with_state(ops);
    app.merge(routes)
        .layer(axum::middleware::from_fn_with_state(state, annotations))
}

/// What the handlers share: the manager's state and the changes running.
pub(crate) struct Operate {
    state: Arc<AppState>,
    /// Targets (`pool:<name>`, `config`) with a change in flight.
    in_flight: Mutex<BTreeSet<String>>,
}

impl Operate {
    /// Marks `target` busy until the returned claim is dropped; 409 if it
    /// is busy already.
    fn claim(&self, target: String, what: &str) -> Result<Claim<'_>, ApiError> {
        let mut busy = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if !busy.insert(target.clone()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{what} is already in flight; retry when it is done"),
            ));
        }
        Ok(Claim { ops: self, target })
    }
}

/// A change in flight; dropping it (the answer, or a client that went away)
/// frees its target.
struct Claim<'a> {
    ops: &'a Operate,
    target: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.ops
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.target);
    }
}

/// Body of the pool and configuration actions (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Why, for the event and the log (at most 1000 characters; stored and
    /// shown, so never a secret).
    #[schema(max_length = 1000)]
    reason: Option<String>,
}

/// What a pool action did.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolActionReply {
    pool: String,
    /// `reload` or `restart`.
    action: String,
    /// The master that was serving, if one was.
    old_pid: Option<u32>,
    /// The master serving now.
    new_pid: u32,
    /// Incremented by every start or hand-over.
    generation: u64,
    /// From the request to the new master being ready.
    took_ms: u64,
}

/// What a configuration reload did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigReloadReply {
    /// Always true here: a refused configuration is answered 422.
    accepted: bool,
    /// When, RFC 3339.
    at: String,
}

/// An operator's annotation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnnotationRequest {
    /// What happened (`deploy 4.2.1`), at most 1000 characters.
    #[schema(min_length = 1, max_length = 1000)]
    text: String,
    /// The pool it concerns, if one.
    pool: Option<String>,
    /// Extra tags for Grafana: at most 16, each 1 to 64 of `A-Za-z0-9_.:/-`.
    #[schema(max_items = 16)]
    tags: Option<Vec<String>>,
}

/// The recorded annotation, as Grafana will show it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnnotationCreated {
    /// Milliseconds since the Unix epoch.
    time: i64,
    title: String,
    text: String,
    pool: Option<String>,
    tags: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/pools/{pool}/reload", tag = "operate",
    summary = "Reload a pool: hand it over to a new master with its current settings",
    description = "Every worker starts afresh; requests in flight finish on the old master and nothing is dropped. The new config is checked by `php-fpm -t` first; a refusal leaves the pool running as it was.",
    params(("pool" = String, Path, description = "The pool's name.", example = "www")),
    request_body(content = Option<ActionRequest>, content_type = "application/json", description = "Optional."),
    responses(
        (status = 202, description = "Done: the new master serves.", body = PoolActionReply),
        (status = 400, description = "A malformed body or an unknown field (named).", body = super::openapi::contract::Error),
        (status = 403, description = "The caller lacks the scope, or, with authentication off, is not on loopback.", body = super::openapi::contract::Error),
        (status = 404, description = "No pool has this name.", body = super::openapi::contract::Error),
        (status = 409, description = "A change of this pool is already in flight (`conflict`), or the pool is observed, not run by the manager (`observed`).", body = super::openapi::contract::Error),
        (status = 413, description = "The body is larger than server.max_body_bytes.", body = super::openapi::contract::Error),
        (status = 415, description = "A body not sent as application/json.", body = super::openapi::contract::Error),
        (status = 422, description = "Refused by `php-fpm -t` (its message); the pool keeps running as it was.", body = super::openapi::contract::Error),
        (status = 503, description = "The pool cannot take a change now (starting, stopping, or its new master did not start).", body = super::openapi::contract::Error)))]
pub(crate) async fn pool_reload(
    State(ops): State<Arc<Operate>>,
    Path(pool): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<PoolActionReply>), ApiError> {
    pool_action(&ops, &pool, &headers, &body, MasterAction::Reload).await
}

#[utoipa::path(post, path = "/api/v1/pools/{pool}/restart", tag = "operate",
    summary = "Restart a pool: a reload whose new master compiles every script again",
    description = "As reload, with the pool's compiled-script cache (`opcache.file_cache`) emptied first: nothing compiled before the restart is reused, as after a deploy with `opcache.validate_timestamps=0`.",
    params(("pool" = String, Path, description = "The pool's name.", example = "www")),
    request_body(content = Option<ActionRequest>, content_type = "application/json", description = "Optional."),
    responses(
        (status = 202, description = "Done: the new master serves.", body = PoolActionReply),
        (status = 400, description = "A malformed body or an unknown field (named).", body = super::openapi::contract::Error),
        (status = 403, description = "The caller lacks the scope, or, with authentication off, is not on loopback.", body = super::openapi::contract::Error),
        (status = 404, description = "No pool has this name.", body = super::openapi::contract::Error),
        (status = 409, description = "A change of this pool is already in flight (`conflict`), or the pool is observed (`observed`).", body = super::openapi::contract::Error),
        (status = 413, description = "The body is larger than server.max_body_bytes.", body = super::openapi::contract::Error),
        (status = 415, description = "A body not sent as application/json.", body = super::openapi::contract::Error),
        (status = 422, description = "Refused by `php-fpm -t` (its message); the pool keeps running as it was.", body = super::openapi::contract::Error),
        (status = 503, description = "The pool cannot take a change now.", body = super::openapi::contract::Error)))]
pub(crate) async fn pool_restart(
    State(ops): State<Arc<Operate>>,
    Path(pool): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<PoolActionReply>), ApiError> {
    pool_action(&ops, &pool, &headers, &body, MasterAction::Restart).await
}

async fn pool_action(
    ops: &Operate,
    pool: &str,
    headers: &HeaderMap,
    body: &[u8],
    action: MasterAction,
) -> Result<(StatusCode, Json<PoolActionReply>), ApiError> {
    let req: ActionRequest = parse_body(headers, body)?.unwrap_or_default();
    check_text("reason", req.reason.as_deref(), false)?;
    let handle = pool_handle(&ops.state, pool)?;
    let _claim = ops.claim(format!("pool:{pool}"), &format!("a change of pool {pool}"))?;
    match handle.master(action, "api", req.reason).await {
        Ok(r) => Ok((
            StatusCode::ACCEPTED,
            Json(PoolActionReply {
                pool: pool.to_owned(),
                action: action.name().to_owned(),
                old_pid: r.old_pid,
                new_pid: r.new_pid,
                generation: r.generation,
                took_ms: u64::try_from(r.took.as_millis()).unwrap_or(u64::MAX),
            }),
        )),
        Err(e) => Err(match &e {
            MasterError::Observed(_) => {
                ApiError::new(StatusCode::CONFLICT, "observed", e.to_string())
            }
            MasterError::Apply(ApplyError::Refused(_)) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "change_refused",
                format!("{e}; the pool keeps running as it was"),
            ),
            MasterError::Apply(_) | MasterError::Gone => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string())
            }
        }),
    }
}

/// The actor of a pool: 404 for a name no pool has, 503 for a configured
/// pool whose actor is not running (yet, or any more).
fn pool_handle(state: &AppState, pool: &str) -> Result<PoolHandle, ApiError> {
    let handle = state
        .handles
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(n, _)| n.as_str() == pool)
        .map(|(_, h)| h.clone());
    match handle {
        Some(h) => Ok(h),
        None if state.pools().keys().any(|n| n.as_str() == pool) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("pool {pool} is starting or stopping; retry shortly"),
        )),
        None => Err(ApiError::not_found(format!(
            "no pool named {:?}",
            shown(pool)
        ))),
    }
}

#[utoipa::path(post, path = "/api/v1/config/reload", tag = "operate",
    summary = "Reload the configuration, as SIGHUP does",
    description = "An invalid configuration changes nothing and is answered 422 with every problem. A valid one starts added pools, stops removed ones and hands changed ones to their actors (each checked by `php-fpm -t`; see each pool's `last_apply_error` and the events).",
    request_body(content = Option<ActionRequest>, content_type = "application/json", description = "Optional."),
    responses(
        (status = 202, description = "The configuration was accepted and applied.", body = ConfigReloadReply),
        (status = 400, description = "A malformed body or an unknown field (named).", body = super::openapi::contract::Error),
        (status = 403, description = "The caller lacks the scope, or, with authentication off, is not on loopback.", body = super::openapi::contract::Error),
        (status = 409, description = "A reload asked over the API is already in flight.", body = super::openapi::contract::Error),
        (status = 413, description = "The body is larger than server.max_body_bytes.", body = super::openapi::contract::Error),
        (status = 415, description = "A body not sent as application/json.", body = super::openapi::contract::Error),
        (status = 422, description = "The configuration is invalid (`config_invalid`, every problem in the message); nothing changed.", body = super::openapi::contract::Error),
        (status = 503, description = "The manager is starting or stopping.", body = super::openapi::contract::Error)))]
pub(crate) async fn config_reload(
    State(ops): State<Arc<Operate>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<ConfigReloadReply>), ApiError> {
    let req: ActionRequest = parse_body(&headers, &body)?.unwrap_or_default();
    check_text("reason", req.reason.as_deref(), false)?;
    let _claim = ops.claim("config".to_owned(), "a configuration reload")?;
    tracing::info!(
        reason = req.reason.as_deref().unwrap_or(""),
        "Configuration reload asked over the API."
    );
    let outcome = ops.state.config_reloads.request().await.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the manager is starting or stopping; retry shortly",
        )
    })?;
    if outcome.accepted {
        Ok((
            StatusCode::ACCEPTED,
            Json(ConfigReloadReply {
                accepted: true,
                at: humantime::format_rfc3339_millis(outcome.at).to_string(),
            }),
        ))
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "config_invalid",
            format!(
                "the configuration was refused; nothing changed: {}",
                outcome.problems.join("; ")
            ),
        ))
    }
}

/// A configuration reload asked over the API, answered by the manager's
/// reload loop with the reload's outcome.
pub type ReloadReply = oneshot::Sender<ReloadOutcome>;

/// The link between the API and the manager's reload loop (`app`), which
/// takes the receiving end once and reloads exactly as on SIGHUP.
#[derive(Debug)]
pub struct ConfigReloads {
    tx: mpsc::Sender<ReloadReply>,
    rx: Mutex<Option<mpsc::Receiver<ReloadReply>>>,
}

impl Default for ConfigReloads {
    fn default() -> ConfigReloads {
        let (tx, rx) = mpsc::channel(1);
        ConfigReloads {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl ConfigReloads {
    /// The requests, for the reload loop (a closed channel if taken before).
    pub fn take_receiver(&self) -> mpsc::Receiver<ReloadReply> {
        self.rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| mpsc::channel(1).1)
    }

    /// Asks for a reload and waits for its outcome; `None` when no reload
    /// loop runs (not started, or stopped).
    pub async fn request(&self) -> Option<ReloadOutcome> {
        let untaken = self.rx.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        if untaken {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        self.tx.send(reply).await.ok()?;
        answer.await.ok()
    }
}

/// The layer in front of Grafana's annotation path: a POST whose JSON body
/// has `text` is an operator's annotation and is answered here; everything
/// else goes on, untouched, to the route behind.
async fn annotations(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || req.uri().path() != ANNOTATIONS {
        return next.run(req).await;
    }
    let max = usize::try_from(state.config().server.max_body_bytes).unwrap_or(usize::MAX);
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, max).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body could not be read within server.max_body_bytes ({max} bytes)"),
        )
        .into_response();
    };
    if !is_annotation(&bytes) {
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    }
    match create_annotation(&state, &parts, &bytes) {
        Ok(created) => (StatusCode::ACCEPTED, Json(created)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// An operator's annotation always has `text`; SimpleJSON's query never does.
fn is_annotation(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
        .is_ok_and(|m| m.contains_key("text"))
}

fn create_annotation(
    state: &AppState,
    parts: &Parts,
    body: &[u8],
) -> Result<AnnotationCreated, ApiError> {
    let req: AnnotationRequest = parse_body(&parts.headers, body)?
        .ok_or_else(|| ApiError::invalid_parameter("text: required"))?;
    check_text("text", Some(&req.text), true)?;
    let tags = req.tags.unwrap_or_default();
    check_tags(&tags)?;
    if let Some(p) = &req.pool {
        if !state.pools().keys().any(|n| n.as_str() == p) {
            return Err(ApiError::not_found(format!(
                "pool: no pool named {:?}",
                shown(p)
            )));
        }
    }
    let ev = ManagerEvent::new(
        req.pool.as_deref(),
        "api",
        What::Annotation {
            text: req.text.trim().to_owned(),
            tags: tags.clone(),
        },
    );
    let stored = ev.to_stored();
    state.events.emit(ev);
    // As `GET /api/v1/events/annotations` will list it.
    let mut all = vec![
        stored.kind.as_str().to_owned(),
        stored.severity.as_str().to_owned(),
    ];
    if let Some(p) = &req.pool {
        all.push(format!("pool:{p}"));
    }
    all.extend(tags);
    Ok(AnnotationCreated {
        time: stored.ts_ms,
        title: match &req.pool {
            Some(p) => format!("{} ({p})", stored.kind),
            None => stored.kind.to_string(),
        },
        text: stored.message,
        pool: req.pool,
        tags: all,
    })
}

/// A JSON body: `None` when empty (or JSON `null`, as the document allows
/// for optional bodies), 415 when not sent as JSON, 400 naming the problem
/// (a syntax error, an unknown or mistyped field) otherwise.
fn parse_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null" {
        return Ok(None);
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON sent with Content-Type: application/json",
        ));
    }
    // serde would read a struct from an array too; the bodies are objects.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid_parameter(
            "the body must be a JSON object, like {\"reason\": \"deploy 4.2.1\"}",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid_parameter(format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::invalid_parameter(format!("body: {inner}"))
        } else {
            ApiError::invalid_parameter(format!("{path}: {inner}"))
        }
    })?;
    // Anything after the value is as malformed as a syntax error in it.
    de.end()
        .map_err(|e| ApiError::invalid_parameter(format!("the body is not valid JSON: {e}")))?;
    Ok(Some(value))
}

/// Free text for events: bounded, no control characters but newline and tab.
fn check_text(name: &str, text: Option<&str>, required: bool) -> Result<(), ApiError> {
    let Some(t) = text else {
        return if required {
            Err(ApiError::invalid_parameter(format!("{name}: required")))
        } else {
            Ok(())
        };
    };
    if required && t.trim().is_empty() {
        return Err(ApiError::invalid_parameter(format!(
            "{name}: must not be empty"
        )));
    }
    if t.chars().count() > MAX_TEXT {
        return Err(ApiError::invalid_parameter(format!(
            "{name}: at most {MAX_TEXT} characters"
        )));
    }
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::invalid_parameter(format!(
            "{name}: no control characters (newline and tab are fine)"
        )));
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid_parameter(format!(
            "tags: at most {MAX_TAGS}"
        )));
    }
    let ok = |t: &str| {
        (1..=MAX_TAG).contains(&t.len())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:/-".contains(c))
    };
    match tags.iter().position(|t| !ok(t)) {
        Some(i) => Err(ApiError::invalid_parameter(format!(
            "tags[{i}]: {:?} is not 1 to {MAX_TAG} of A-Za-z0-9_.:/-",
            shown(&tags[i])
        ))),
        None => Ok(()),
    }
}

/// The start of a name for an error message.
fn shown(name: &str) -> String {
    if name.chars().count() <= SHOWN {
        name.to_owned()
    } else {
        let mut s: String = name.chars().take(SHOWN).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests;
