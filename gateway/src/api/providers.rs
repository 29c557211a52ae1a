//! Providers (the operators that sell tickets), their routes to nodes, and their gates:
//! names, HTTP check-in tokens and staff PINs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::{Db, DbError};
use crate::nodes::{Shard, SHARDS_MAX, SHARD_NODES_MAX};
use crate::problem::{Json, Path, Problem};
use crate::store::providers as store;
use crate::App;

/// A provider to create or replace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderRequest {
    /// Provider id, 1 to 65535; it is in every code the provider sells.
    pub id: Option<u16>,
    /// Display name.
    pub name: String,
    /// The node that owns this provider's tickets (`host:port`), or the nodes of its shard
    /// (`host:port,host:port`, a primary and its standbys, at most 3: the gateway goes to
    /// whichever leads); absent: the default node.
    #[schema(example = "10.0.0.1:7443,10.0.0.2:7443")]
    pub node: Option<String>,
}

/// A provider.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    /// Provider id.
    pub id: u16,
    /// Display name.
    pub name: String,
    /// The node its tickets are minted on and checked in at, or its shard's nodes
    /// (comma-separated, in the order given).
    pub node: String,
    /// Whether `node` is a route of its own (false: the default node).
    pub routed: bool,
}

/// A gate that checks in over HTTP.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GateRequest {
    /// Gate id, 1 to 65535, as gates report it.
    pub gate: u16,
    /// Where the gate is ("North 3").
    pub name: String,
}

/// A gate's credentials, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct GateToken {
    /// Provider.
    pub provider: u16,
    /// Gate id.
    pub gate: u16,
    /// Where the gate is (shown on holders' pages: "gate 3 (North)").
    pub name: String,
    /// Bearer token for `POST /v1/checkin`; only its hash is stored, so keep it.
    pub token: String,
    /// The gate's staff PIN (six digits) for check-in on the holder's own page
    /// (`POST /t/{code}/checkin`); only a salted hash is stored, so keep it. Replaced and
    /// revoked with the token.
    #[schema(example = "042917")]
    pub pin: String,
}

/// Every provider route in the database.
pub async fn load_routes(db: &Db) -> Result<Vec<(u16, Shard)>, DbError> {
    db.call(|c| -> Result<_, DbError> {
        let mut out = Vec::new();
        for (id, node) in store::routes(c)? {
            match Shard::parse(&node) {
                Ok(shard) => out.push((id, shard)),
                Err(e) => tracing::warn!(
                    provider = id,
                    %node,
                    error = %e,
                    "ignoring a route that names no shard"
                ),
            }
        }
        Ok(out)
    })
    .await
}

/// A route's `node`: one node or a shard's nodes. Bad text is refused (400) saying what is
/// wrong with it.
fn parse_node(app: &App, node: &Option<String>) -> Result<Option<Shard>, Problem> {
    let Some(text) = node else {
        return Ok(None);
    };
    let shard = Shard::parse(text).map_err(|e| {
        Problem::bad_request(format!(
            "`node` {text:?} names no node: {e}; give host:port (127.0.0.1:7443), or a \
             shard's nodes as host:port,host:port (at most {SHARD_NODES_MAX})"
        ))
    })?;
    if app.nodes.routes.too_many_with(&shard) {
        return Err(Problem::unprocessable(format!(
            "routes name {SHARDS_MAX} shards already; route this provider to one of them, \
             or remove routes no longer used"
        )));
    }
    Ok(Some(shard))
}

fn view(app: &App, id: u16, name: String) -> ProviderView {
    let routes = &app.nodes.routes;
    ProviderView {
        id,
        name,
        node: routes.route(id).to_string(),
        routed: routes.has_route(id),
    }
}

/// Creates a provider.
#[utoipa::path(post, path = "/v1/providers", request_body = ProviderRequest,
    security(("api_token" = [])),
    responses((status = 201, body = ProviderView), (status = 400, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(app): State<Arc<App>>,
    Json(req): Json<ProviderRequest>,
) -> Result<(StatusCode, Json<ProviderView>), Problem> {
    let Some(id) = req.id.filter(|id| *id != 0) else {
        return Err(Problem::unprocessable(
            "`id` must be a provider id from 1 to 65535",
        ));
    };
    let name = super::text_field("name", &req.name)?;
    let node = parse_node(&app, &req.node)?;
    // Stored in canonical form, as `GET` shows it.
    let text = node.as_ref().map(Shard::to_string);
    let n = name.clone();
    let inserted = app
        .db
        .call(move |c| -> Result<bool, Problem> { Ok(store::insert(c, id, &n, text)?) })
        .await?;
    if !inserted {
        return Err(Problem::conflict(format!(
            "provider {id} exists; change it with PUT /v1/providers/{id}"
        )));
    }
    if let Some(shard) = &node {
        crate::live::ensure_following(&app, shard);
    }
    app.nodes.routes.set_route(id, node);
    Ok((StatusCode::CREATED, Json(view(&app, id, name))))
}

/// Lists providers.
#[utoipa::path(get, path = "/v1/providers", security(("api_token" = [])),
    responses((status = 200, body = Vec<ProviderView>)))]
pub async fn list(State(app): State<Arc<App>>) -> Result<Json<Vec<ProviderView>>, Problem> {
    let rows = app
        .db
        .call(|c| -> Result<Vec<(u16, String)>, Problem> { Ok(store::list(c)?) })
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, name)| view(&app, id, name))
            .collect(),
    ))
}

/// Creates or replaces a provider, and with it its route (no `node`: the default node).
#[utoipa::path(put, path = "/v1/providers/{id}", request_body = ProviderRequest,
    params(("id" = u16, Path, description = "provider id")), security(("api_token" = [])),
    responses((status = 200, body = ProviderView), (status = 400, body = Problem),
        (status = 422, body = Problem)))]
pub async fn put(
    State(app): State<Arc<App>>,
    Path(id): Path<u16>,
    Json(req): Json<ProviderRequest>,
) -> Result<Json<ProviderView>, Problem> {
    if id == 0 {
        return Err(Problem::unprocessable("provider ids run from 1 to 65535"));
    }
    if req.id.is_some_and(|body_id| body_id != id) {
        return Err(Problem::unprocessable(
            "`id` in the body differs from the path",
        ));
    }
    let name = super::text_field("name", &req.name)?;
    let node = parse_node(&app, &req.node)?;
    // Stored in canonical form, as `GET` shows it.
    let text = node.as_ref().map(Shard::to_string);
    let n = name.clone();
    app.db
        .call(move |c| -> Result<(), Problem> { Ok(store::upsert(c, id, &n, text)?) })
        .await?;
    if let Some(shard) = &node {
        crate::live::ensure_following(&app, shard);
    }
    app.nodes.routes.set_route(id, node);
    Ok(Json(view(&app, id, name)))
}

/// Names one of the provider's gates and issues its credentials: an HTTP check-in token and
/// a staff PIN. A gate has one of each: issuing again replaces both (the old ones stop
/// working at once).
#[utoipa::path(post, path = "/v1/providers/{id}/gates", request_body = GateRequest,
    params(("id" = u16, Path, description = "provider id")), security(("api_token" = [])),
    responses((status = 201, body = GateToken), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
pub async fn create_gate(
    State(app): State<Arc<App>>,
    Path(provider): Path<u16>,
    Json(req): Json<GateRequest>,
) -> Result<(StatusCode, Json<GateToken>), Problem> {
    if req.gate == 0 {
        return Err(Problem::unprocessable("`gate` must be from 1 to 65535"));
    }
    let name = super::text_field("name", &req.name)?;
    let token = super::auth::new_token();
    let hash = super::auth::hash_token(&token);
    let pin = super::auth::new_pin();
    let pin_salt = super::auth::new_pin_salt();
    let pin_hash = super::auth::hash_pin(&pin_salt, provider, req.gate, &pin);
    let (n, gate) = (name.clone(), req.gate);
    app.db
        .call(move |c| -> Result<(), Problem> {
            if !store::exists(c, provider)? {
                return Err(Problem::not_found(format!(
                    "no provider {provider}; create it with POST /v1/providers"
                )));
            }
            let tx = crate::db::immediate(c)?;
            let credentials = store::GateCredentials {
                token_hash: &hash,
                pin_salt: &pin_salt,
                pin_hash: &pin_hash,
            };
            store::replace_gate_token(&tx, provider, gate, &n, &credentials)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(GateToken {
            provider,
            gate: req.gate,
            name,
            token,
            pin,
        }),
    ))
}

/// Revokes the credentials of one of the provider's gates: its HTTP scans are refused (401)
/// and its PIN opens no staff check-in from now on. Its name stays on pages that show it.
#[utoipa::path(delete, path = "/v1/providers/{id}/gates/{gate}",
    params(("id" = u16, Path, description = "provider id"), ("gate" = u16, Path, description = "gate id")),
    security(("api_token" = [])),
    responses((status = 204, description = "revoked"), (status = 404, body = Problem)))]
pub async fn revoke_gate(
    State(app): State<Arc<App>>,
    Path((provider, gate)): Path<(u16, u16)>,
) -> Result<StatusCode, Problem> {
    let removed = app
        .db
        .call(move |c| -> Result<bool, Problem> {
            Ok(store::delete_gate_token(c, provider, gate)?)
        })
        .await?;
    match removed {
        false => Err(Problem::not_found(format!(
            "gate {gate} of provider {provider} has no token"
        ))),
        true => Ok(StatusCode::NO_CONTENT),
    }
}
