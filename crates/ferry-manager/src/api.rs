//! The REST API (JSON over HTTP): Ferry's own under `/api/v1`, and under `/oapi/v1` the job
//! endpoints as Dragonfly's open API shapes them, which Harbor's preheat provider calls.
//!
//! Every route is declared once in [`routes`]: the router and the OpenAPI document
//! (`/api/v1/openapi.json`) are both built from that table, so they cannot disagree.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::Method;
use axum::routing::{self, MethodRouter};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::auth::{self, Principal, Role, Scope};
use crate::clusters::{self, ClusterInput, Members};
use crate::db::Db;
use crate::jobs::{self, Job, Kind, State as JobStateName};
use crate::metrics::Metrics;
use crate::work::{self, Args, Plan};
use crate::ManagerError;

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    pub db: Db,
    pub wake: Arc<Notify>,
    pub http: reqwest::Client,
    pub silent_ms: i64,
    pub metrics: Arc<Metrics>,
}

type Result<T> = std::result::Result<T, ManagerError>;

/// One route: how it is called, what it needs, and its handler.
pub struct Route {
    pub method: Method,
    /// In axum's syntax (`/api/v1/jobs/:id`).
    pub path: &'static str,
    pub summary: &'static str,
    /// The scope a token needs; `None`: no token (health, sign-in).
    pub scope: Option<Option<Scope>>,
    pub handler: MethodRouter<App>,
}

fn route(
    method: Method,
    path: &'static str,
    scope: Option<Option<Scope>>,
    summary: &'static str,
    h: MethodRouter<App>,
) -> Route {
    Route { method, path, summary, scope, handler: h }
}

/// Every route the manager serves.
pub fn routes() -> Vec<Route> {
    use Method as M;
    let any = Some(None);
    let s = |x| Some(Some(x));
    vec![
        route(M::GET, "/healthy", None, "Liveness: 200 while the manager runs", routing::get(healthy)),
        route(
            M::POST,
            "/api/v1/users/signin",
            None,
            "Sign in with name and password; returns a session token",
            routing::post(sign_in),
        ),
        route(M::GET, "/api/v1/users", s(Scope::User), "List users", routing::get(list_users)),
        route(M::POST, "/api/v1/users", s(Scope::User), "Create a user", routing::post(create_user)),
        route(
            M::GET,
            "/api/v1/personal-access-tokens",
            s(Scope::Token),
            "List personal access tokens",
            routing::get(list_tokens),
        ),
        route(
            M::POST,
            "/api/v1/personal-access-tokens",
            s(Scope::Token),
            "Create a personal access token (its secret is shown once)",
            routing::post(create_token),
        ),
        route(
            M::DELETE,
            "/api/v1/personal-access-tokens/:id",
            s(Scope::Token),
            "Revoke a personal access token",
            routing::delete(revoke_token),
        ),
        route(M::GET, "/api/v1/clusters", s(Scope::Cluster), "List scheduler clusters", routing::get(list_clusters)),
        route(
            M::POST,
            "/api/v1/clusters",
            s(Scope::Cluster),
            "Create a scheduler cluster",
            routing::post(create_cluster),
        ),
        route(
            M::GET,
            "/api/v1/clusters/:id",
            s(Scope::Cluster),
            "Show a cluster with its schedulers and seeds",
            routing::get(show_cluster),
        ),
        route(
            M::PATCH,
            "/api/v1/clusters/:id",
            s(Scope::Cluster),
            "Change a cluster's fields",
            routing::patch(update_cluster),
        ),
        route(
            M::DELETE,
            "/api/v1/clusters/:id",
            s(Scope::Cluster),
            "Delete a cluster",
            routing::delete(delete_cluster),
        ),
        route(
            M::GET,
            "/api/v1/schedulers",
            s(Scope::Cluster),
            "List schedulers (?cluster_id=)",
            routing::get(list_schedulers),
        ),
        route(
            M::GET,
            "/api/v1/seed-peers",
            s(Scope::Cluster),
            "List seed peers (?cluster_id=)",
            routing::get(list_seeds),
        ),
        route(
            M::GET,
            "/api/v1/jobs",
            s(Scope::Job),
            "List jobs, newest first (?state=&limit=)",
            routing::get(list_jobs),
        ),
        route(
            M::POST,
            "/api/v1/jobs",
            s(Scope::Job),
            "Create a job (preheat, get_task, delete_task)",
            routing::post(create_job),
        ),
        route(
            M::GET,
            "/api/v1/jobs/:id",
            s(Scope::Job),
            "Show a job with its per-cluster results",
            routing::get(show_job),
        ),
        route(
            M::POST,
            "/oapi/v1/jobs",
            s(Scope::Job),
            "Create a job (Dragonfly open API; Harbor's preheat provider)",
            routing::post(create_job_oapi),
        ),
        route(
            M::GET,
            "/oapi/v1/jobs/:id",
            s(Scope::Job),
            "Show a job (Dragonfly open API: PENDING until finished)",
            routing::get(show_job_oapi),
        ),
        route(M::GET, "/api/v1/openapi.json", any, "This document", routing::get(openapi)),
    ]
}

pub fn router(app: App) -> Router {
    let mut r = Router::new();
    for route in routes() {
        r = r.route(route.path, route.handler);
    }
    r.fallback(|| async { ManagerError::NotFound("no such endpoint; see /api/v1/openapi.json".into()) }).with_state(app)
}

/// The caller, from its `Authorization: Bearer` token.
pub struct Auth(pub Principal);

#[axum::async_trait]
impl FromRequestParts<App> for Auth {
    type Rejection = ManagerError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ManagerError::Unauthorized("no token: send `Authorization: Bearer <token>`".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ManagerError::Unauthorized("the Authorization header is not `Bearer <token>`".into()))?;
        auth::authenticate(&app.db, token).await.map(Auth)
    }
}

/// A JSON body; a malformed one is a 400 that says what is wrong.
pub struct Body<T>(pub T);

#[axum::async_trait]
impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ManagerError;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ManagerError::BadRequest("send the body as JSON (Content-Type: application/json)".into()))
            }
            Err(e) => Err(ManagerError::BadRequest(format!("malformed JSON body: {}", e.body_text()))),
        }
    }
}

async fn healthy() -> &'static str {
    "OK"
}

#[derive(Deserialize)]
struct SignIn {
    name: String,
    password: String,
}

#[derive(Serialize, Deserialize)]
pub struct SessionToken {
    pub token: String,
    pub expires_at: String,
}

async fn sign_in(State(app): State<App>, Body(b): Body<SignIn>) -> Result<Json<SessionToken>> {
    let (token, expires) = auth::sign_in(&app.db, &b.name, &b.password).await?;
    Ok(Json(SessionToken { token, expires_at: crate::db::rfc3339(expires) }))
}

#[derive(Serialize, Deserialize)]
pub struct UserView {
    pub id: i64,
    pub name: String,
    pub role: Role,
}

async fn list_users(State(app): State<App>, Auth(p): Auth) -> Result<Json<Vec<UserView>>> {
    p.require(Scope::User)?;
    use sqlx::Row;
    let rows = sqlx::query("SELECT id, name, role FROM users ORDER BY id").fetch_all(&app.db.pool).await?;
    rows.iter()
        .map(|r| {
            Ok(UserView {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                role: Role::parse(&r.try_get::<String, _>("role")?)?,
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    role: Option<String>,
}

async fn create_user(State(app): State<App>, Auth(p): Auth, Body(b): Body<NewUser>) -> Result<Json<UserView>> {
    p.require(Scope::User)?;
    let role = Role::parse(b.role.as_deref().unwrap_or("guest"))?;
    let id = auth::create_user(&app.db, &b.name, &b.password, role).await?;
    Ok(Json(UserView { id, name: b.name, role }))
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    pub scopes: Vec<String>,
    /// Lifetime in seconds; default 90 days.
    #[serde(default)]
    pub expires_in_seconds: Option<i64>,
}

#[derive(Serialize, Deserialize)]
pub struct CreatedToken {
    pub id: i64,
    pub name: String,
    /// The secret: shown this once.
    pub token: String,
    pub scopes: Vec<Scope>,
    pub expires_at: String,
}

async fn create_token(State(app): State<App>, Auth(p): Auth, Body(b): Body<NewToken>) -> Result<Json<CreatedToken>> {
    p.require(Scope::Token)?;
    let scopes = b.scopes.iter().map(|s| Scope::parse(s)).collect::<Result<Vec<_>>>()?;
    let ttl_ms = b.expires_in_seconds.unwrap_or(90 * 86400).saturating_mul(1000);
    let (id, token, expires) = auth::create_token(&app.db, &p, &b.name, &scopes, ttl_ms).await?;
    tracing::info!(user = %p.user, token = id, "personal access token created");
    Ok(Json(CreatedToken { id, name: b.name, token, scopes, expires_at: crate::db::rfc3339(expires) }))
}

async fn list_tokens(State(app): State<App>, Auth(p): Auth) -> Result<Json<Vec<auth::TokenInfo>>> {
    p.require(Scope::Token)?;
    auth::list_tokens(&app.db, &p).await.map(Json)
}

async fn revoke_token(
    State(app): State<App>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    p.require(Scope::Token)?;
    auth::revoke_token(&app.db, &p, parse_id(&id, "token")?).await?;
    tracing::info!(user = %p.user, token = %id, "personal access token revoked");
    Ok(Json(serde_json::json!({ "id": id, "state": "revoked" })))
}

fn parse_id(s: &str, what: &str) -> Result<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| ManagerError::BadRequest(format!("{what} id `{s}` is not a positive number")))
}

async fn list_clusters(State(app): State<App>, Auth(p): Auth) -> Result<Json<Vec<clusters::Cluster>>> {
    p.require(Scope::Cluster)?;
    clusters::list(&app.db).await.map(Json)
}

async fn create_cluster(
    State(app): State<App>,
    Auth(p): Auth,
    Body(b): Body<ClusterInput>,
) -> Result<Json<clusters::Cluster>> {
    p.require(Scope::Cluster)?;
    let c = clusters::create(&app.db, b).await?;
    tracing::info!(cluster = c.id, name = %c.name, "cluster created");
    Ok(Json(c))
}

#[derive(Serialize, Deserialize)]
pub struct ClusterView {
    #[serde(flatten)]
    pub cluster: clusters::Cluster,
    pub schedulers: Vec<clusters::Member>,
    pub seed_peers: Vec<clusters::Member>,
}

async fn show_cluster(State(app): State<App>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<ClusterView>> {
    p.require(Scope::Cluster)?;
    let id = parse_id(&id, "cluster")?;
    let cluster = clusters::get(&app.db, id).await?;
    let schedulers = clusters::members(&app.db, Members::Schedulers, Some(id), app.silent_ms).await?;
    let seed_peers = clusters::members(&app.db, Members::Seeds, Some(id), app.silent_ms).await?;
    Ok(Json(ClusterView { cluster, schedulers, seed_peers }))
}

async fn update_cluster(
    State(app): State<App>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Body(b): Body<ClusterInput>,
) -> Result<Json<clusters::Cluster>> {
    p.require(Scope::Cluster)?;
    let c = clusters::update(&app.db, parse_id(&id, "cluster")?, b).await?;
    tracing::info!(cluster = c.id, "cluster changed");
    Ok(Json(c))
}

async fn delete_cluster(
    State(app): State<App>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    p.require(Scope::Cluster)?;
    clusters::delete(&app.db, parse_id(&id, "cluster")?).await?;
    Ok(Json(serde_json::json!({ "id": id, "state": "deleted" })))
}

#[derive(Deserialize)]
struct ClusterFilter {
    cluster_id: Option<i64>,
}

async fn list_schedulers(
    State(app): State<App>,
    Auth(p): Auth,
    Query(f): Query<ClusterFilter>,
) -> Result<Json<Vec<clusters::Member>>> {
    p.require(Scope::Cluster)?;
    clusters::members(&app.db, Members::Schedulers, f.cluster_id, app.silent_ms).await.map(Json)
}

async fn list_seeds(
    State(app): State<App>,
    Auth(p): Auth,
    Query(f): Query<ClusterFilter>,
) -> Result<Json<Vec<clusters::Member>>> {
    p.require(Scope::Cluster)?;
    clusters::members(&app.db, Members::Seeds, f.cluster_id, app.silent_ms).await.map(Json)
}

#[derive(Deserialize)]
struct JobFilter {
    state: Option<String>,
    limit: Option<i64>,
}

async fn list_jobs(State(app): State<App>, Auth(p): Auth, Query(f): Query<JobFilter>) -> Result<Json<Vec<Job>>> {
    p.require(Scope::Job)?;
    let state = match f.state.as_deref() {
        None | Some("") => None,
        Some(s) => {
            Some(serde_json::from_value::<JobStateName>(serde_json::Value::String(s.to_owned())).map_err(|_| {
                ManagerError::BadRequest(format!("state `{s}`: one of PENDING, RUNNING, SUCCESS, FAILURE"))
            })?)
        }
    };
    let jobs = jobs::list(&app.db, state, f.limit.unwrap_or(100).clamp(1, 1000)).await?;
    Ok(Json(jobs.into_iter().map(Job::redacted).collect()))
}

/// A job request, as Ferry's CLI and Dragonfly's open API clients (Harbor) send it.
#[derive(Deserialize, Serialize)]
pub struct NewJob {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub args: serde_json::Value,
    #[serde(default)]
    pub scheduler_cluster_ids: Vec<i64>,
}

async fn new_job(app: &App, p: &Principal, b: NewJob) -> Result<Job> {
    p.require(Scope::Job)?;
    let kind = Kind::parse(&b.kind)?;
    let args: Args = match &b.args {
        serde_json::Value::Null => Args::default(),
        v => serde_json::from_value(v.clone()).map_err(|e| ManagerError::BadRequest(format!("args: {e}")))?,
    };
    let plan = work::plan(kind, &args)?;
    let mut ids = b.scheduler_cluster_ids.clone();
    ids.extend(&args.scheduler_cluster_ids);
    ids.sort_unstable();
    ids.dedup();
    for id in &ids {
        clusters::get(&app.db, *id).await?;
    }
    if let Plan::Image { image, .. } = &plan {
        work::check_image(&app.http, image, &args).await?;
    }
    let job = jobs::insert(&app.db, kind, &b.args, &ids, p.user_id).await?;
    app.metrics.job_created(kind);
    app.wake.notify_one();
    tracing::info!(job = job.id, kind = kind.name(), user = %p.user, "job created");
    Ok(job.redacted())
}

async fn create_job(State(app): State<App>, Auth(p): Auth, Body(b): Body<NewJob>) -> Result<Json<Job>> {
    new_job(&app, &p, b).await.map(Json)
}

async fn show_job(State(app): State<App>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<Job>> {
    p.require(Scope::Job)?;
    Ok(Json(jobs::get(&app.db, parse_id(&id, "job")?).await?.redacted()))
}

/// Dragonfly's open API knows PENDING, SUCCESS and FAILURE; a running job is PENDING there
/// (Harbor reads any other state as a failure).
fn oapi(mut job: Job) -> Job {
    if job.state == JobStateName::Running {
        job.state = JobStateName::Pending;
    }
    job
}

async fn create_job_oapi(State(app): State<App>, Auth(p): Auth, Body(b): Body<NewJob>) -> Result<Json<Job>> {
    new_job(&app, &p, b).await.map(|j| Json(oapi(j)))
}

async fn show_job_oapi(State(app): State<App>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<Job>> {
    p.require(Scope::Job)?;
    Ok(Json(oapi(jobs::get(&app.db, parse_id(&id, "job")?).await?.redacted())))
}

async fn openapi(Auth(_): Auth) -> Json<serde_json::Value> {
    Json(crate::openapi::document(&routes()))
}
