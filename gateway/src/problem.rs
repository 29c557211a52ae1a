//! RFC 9457 problem details: every error the gateway answers, from a malformed body to an
//! unknown route, is `application/problem+json` with a message a person can act on.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use stile_protocol::client::ClientError;

use crate::db::DbError;

/// The media type of a problem.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One problem, as RFC 9457 spells it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` for a plain HTTP status).
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's short text.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong and what to do about it.
    pub detail: String,
    /// Seconds to wait before retrying, when that helps.
    #[serde(skip)]
    pub retry_after_s: Option<u32>,
    /// Extension members (RFC 9457 §3.2), merged into the object.
    #[serde(skip)]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Problem {
    /// A problem with this status and detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("https://stile.dev/problems/{}", status.as_u16()),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after_s: None,
            extra: None,
        }
    }

    /// 400: the request is wrong.
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404: no such thing.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, detail)
    }

    /// 409: conflicts with what exists.
    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, detail)
    }

    /// 422: well-formed, but the values make no sense.
    pub fn unprocessable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    /// 401: no or a wrong token.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, detail)
    }

    /// 403: the token may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, detail)
    }

    /// 503: a node or the database cannot answer now.
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail);
        p.retry_after_s = Some(1);
        p
    }

    /// The same problem, asking the client to retry after `s` seconds.
    pub fn retry_after(mut self, s: u32) -> Problem {
        self.retry_after_s = Some(s);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut value = serde_json::to_value(&self).unwrap_or_default();
        if let (Some(extra), Some(obj)) = (&self.extra, value.as_object_mut()) {
            for (k, v) in extra {
                obj.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let body = serde_json::to_vec(&value).unwrap_or_default();
        let mut res = (status, body).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after_s {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

/// The conflict a broken database rule stands for, in words a client can act on.
fn constraint_conflict(message: &str) -> Problem {
    let detail = if message.contains("stile: sold out") {
        "the event sold out while this request ran; nothing was booked".to_string()
    } else if message.contains("tickets.event, tickets.seat") {
        "a seat of this request was sold meanwhile; nothing was booked".to_string()
    } else if message.contains("stile: seat not in the seat map") {
        "a seat of this request is not in the event's seat map; nothing was booked".to_string()
    } else if message.contains("stile: account links the most devices it may") {
        format!(
            "the account links {} devices, the most it may; unlink one first",
            crate::store::accounts::DEVICES_PER_ACCOUNT_MAX
        )
    } else {
        format!("the request conflicts with what is stored ({message}); nothing was changed")
    };
    Problem::conflict(detail)
}

impl From<DbError> for Problem {
    fn from(e: DbError) -> Problem {
        if let DbError::Sql(rusqlite::Error::SqliteFailure(f, message)) = &e {
            if f.code == rusqlite::ErrorCode::ConstraintViolation {
                // A rule the database holds (capacity, a seat sold once, a unique key): the
                // client's request lost a race or repeats what exists, never a failure.
                let message = message.as_deref().unwrap_or("constraint");
                tracing::info!(%message, "database rule refused a change");
                return constraint_conflict(message);
            }
        }
        tracing::error!(error = %e, "database");
        match e {
            DbError::Sql(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                Problem::unavailable("the database is busy; retry in a moment")
            }
            _ => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the gateway's database failed; nothing was changed, retry later",
            ),
        }
    }
}

impl From<rusqlite::Error> for Problem {
    fn from(e: rusqlite::Error) -> Problem {
        Problem::from(DbError::from(e))
    }
}

impl From<ClientError> for Problem {
    fn from(e: ClientError) -> Problem {
        match e {
            ClientError::Node { code, message } => match code {
                stile_protocol::frame::error_code::NOT_FOUND => {
                    Problem::not_found(format!("the node has no such ticket: {message}"))
                }
                stile_protocol::frame::error_code::BAD_REQUEST => {
                    Problem::unprocessable(format!("the node refused the request: {message}"))
                }
                _ => Problem::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the node refused the request (error {code}): {message}"),
                ),
            },
            other => {
                tracing::warn!(error = %other, "node");
                Problem::unavailable(format!("the ticket node is not reachable now: {other}"))
            }
        }
    }
}

impl From<JsonRejection> for Problem {
    fn from(r: JsonRejection) -> Problem {
        let status = r.status();
        let detail = match &r {
            JsonRejection::MissingJsonContentType(_) => {
                "send the body as JSON with `Content-Type: application/json`".to_string()
            }
            JsonRejection::JsonSyntaxError(_) => {
                format!("the body is not valid JSON: {}", r.body_text())
            }
            JsonRejection::JsonDataError(_) => {
                format!(
                    "the JSON does not have the expected fields: {}",
                    r.body_text()
                )
            }
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the body is larger than {} bytes", crate::BODY_MAX_BYTES)
            }
            _ => r.body_text(),
        };
        Problem::new(status, detail)
    }
}

impl From<PathRejection> for Problem {
    fn from(r: PathRejection) -> Problem {
        Problem::new(
            r.status(),
            format!("a path parameter is wrong: {}", r.body_text()),
        )
    }
}

impl From<QueryRejection> for Problem {
    fn from(r: QueryRejection) -> Problem {
        Problem::new(
            r.status(),
            format!("a query parameter is wrong: {}", r.body_text()),
        )
    }
}

/// `Json<T>` whose rejections are problems.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(Problem))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `Path<T>` whose rejections are problems.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub struct Path<T>(pub T);

/// `Query<T>` whose rejections are problems.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Problem))]
pub struct Query<T>(pub T);

/// The answer to a route that does not exist. A cut or mangled link of the holder's page
/// (`/t`, `/t/`, `/t/CODE/more`) or of a ticket image (`/v1/tickets/CODE/qr…`) is a link a
/// person opened: it gets the HTML page for a link that leads nowhere unless the request
/// accepts JSON.
pub async fn not_found(headers: axum::http::HeaderMap, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let ticket_link = path == "/t"
        || path.starts_with("/t/")
        || (path.starts_with("/v1/tickets/") && path.contains("/qr"));
    if ticket_link && !crate::api::pages::accepts_json(&headers) {
        return crate::api::pages::missing_response(crate::page::Missing::Unknown);
    }
    Problem::not_found(format!(
        "there is no route {path}; the API is described at /openapi.json"
    ))
    .into_response()
}

/// The answer to a route that exists, asked with the wrong method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method}; see /openapi.json for its methods",
            uri.path()
        ),
    )
}
