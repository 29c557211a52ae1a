//! The client: endpoints, one HTTP exchange with bounds, and the walk over endpoints.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::EtcdError;
use crate::wire::ErrorBody;
use crate::{ENDPOINTS_MAX, REQUEST_BYTES_MAX, REQUEST_TIMEOUT_MAX, RESPONSE_BYTES_MAX};

/// A client of one etcd cluster through its JSON gateway.
///
/// Each call tries the endpoint that answered last, then each other endpoint once, moving on
/// when an endpoint cannot be reached, does not answer within the request timeout, or says
/// the cluster is in the way ([`EtcdError::is_transient`]); any other answer, error or not,
/// ends the call. So a call takes at most `endpoints × request_timeout`.
#[derive(Debug)]
pub struct Etcd {
    /// Base URLs, `http://host:port`, in the order given.
    endpoints: Vec<String>,
    /// The HTTP client: one connection pool shared by every endpoint.
    http: reqwest::Client,
    /// Longest wait for one request on one endpoint, connecting and reading included.
    request_timeout: Duration,
    /// Index in `endpoints` of the endpoint that answered last: each call starts there.
    current: AtomicUsize,
}

impl Etcd {
    /// A client of the cluster at `endpoints`, each `http://host:port` or bare `host:port`
    /// (the caller splits comma lists). Nothing is sent until the first call.
    ///
    /// Refuses an empty list, more than [`ENDPOINTS_MAX`] endpoints, `https` (stile talks to
    /// etcd over plain HTTP on loopback or a private network for now), an endpoint with a
    /// path, and a timeout of zero or over [`REQUEST_TIMEOUT_MAX`].
    pub fn new(endpoints: &[String], request_timeout: Duration) -> Result<Etcd, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        if endpoints.len() > ENDPOINTS_MAX {
            return Err(EtcdError::TooManyEndpoints {
                count: endpoints.len(),
                max: ENDPOINTS_MAX,
            });
        }
        if request_timeout.is_zero() || request_timeout > REQUEST_TIMEOUT_MAX {
            return Err(EtcdError::BadTimeout {
                timeout_ms: request_timeout.as_millis(),
                max_s: REQUEST_TIMEOUT_MAX.as_secs(),
            });
        }
        let endpoints = endpoints
            .iter()
            .map(|e| parse_endpoint(e))
            .collect::<Result<_, _>>()?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config()?)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(request_timeout)
            .timeout(request_timeout)
            .build()
            .map_err(|e| EtcdError::Client(chain(&e)))?;
        Ok(Etcd {
            endpoints,
            http,
            request_timeout,
            current: AtomicUsize::new(0),
        })
    }

    /// The endpoints, as normalized by [`Etcd::new`] (`http://host:port`).
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The endpoint that answered last (the first one before any answer): the next call
    /// starts there.
    pub fn current_endpoint(&self) -> &str {
        &self.endpoints[self.current.load(Ordering::Relaxed)]
    }

    /// POSTs `request` as JSON to `path` on each endpoint in turn, as the type docs say, and
    /// decodes a 2xx answer with `decode(endpoint, body)`.
    pub(crate) async fn call<T>(
        &self,
        path: &'static str,
        request: &impl Serialize,
        decode: impl Fn(&str, &[u8]) -> Result<T, EtcdError>,
    ) -> Result<T, EtcdError> {
        let body = serde_json::to_vec(request).expect("the gateway's request types serialize");
        if body.len() > REQUEST_BYTES_MAX {
            return Err(EtcdError::RequestTooLarge {
                bytes: body.len(),
                max: REQUEST_BYTES_MAX,
            });
        }
        let body = Bytes::from(body);
        let first = self.current.load(Ordering::Relaxed);
        let count = self.endpoints.len();
        let mut failures = Vec::new();
        for step in 0..count {
            let index = (first + step) % count;
            let endpoint = &self.endpoints[index];
            match self.exchange(endpoint, path, body.clone(), &decode).await {
                Err(e) if e.is_transient() => {
                    tracing::debug!(endpoint = %endpoint, path, error = %e, "etcd endpoint failed");
                    failures.push(e);
                }
                answered => {
                    self.current.store(index, Ordering::Relaxed);
                    return answered;
                }
            }
        }
        assert_eq!(failures.len(), count, "every endpoint was tried once");
        if failures.len() == 1 {
            return Err(failures.pop().expect("one failure"));
        }
        Err(EtcdError::Unavailable(failures))
    }

    /// One request to one endpoint.
    async fn exchange<T>(
        &self,
        endpoint: &str,
        path: &str,
        body: Bytes,
        decode: &impl Fn(&str, &[u8]) -> Result<T, EtcdError>,
    ) -> Result<T, EtcdError> {
        let response = self
            .http
            .post(format!("{endpoint}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(endpoint, &e))?;
        let status = response.status();
        let bytes = self.read_bounded(endpoint, response).await?;
        if status.is_success() {
            return decode(endpoint, &bytes);
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) if !e.text().is_empty() => EtcdError::Server {
                endpoint: endpoint.to_string(),
                code: e.code,
                message: e.text().to_string(),
            },
            _ => EtcdError::Http {
                endpoint: endpoint.to_string(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(HTTP_BODY_SHOWN_BYTES)])
                    .into_owned(),
            },
        })
    }

    /// The body, refused past [`RESPONSE_BYTES_MAX`] whatever `Content-Length` says.
    async fn read_bounded(
        &self,
        endpoint: &str,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, EtcdError> {
        let too_large = || EtcdError::ResponseTooLarge {
            endpoint: endpoint.to_string(),
            max: RESPONSE_BYTES_MAX,
        };
        if response
            .content_length()
            .is_some_and(|n| n > RESPONSE_BYTES_MAX as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(endpoint, &e))?
        {
            if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// A failed exchange, sorted into could not connect, too slow, and broke off.
    fn transport_error(&self, endpoint: &str, e: &reqwest::Error) -> EtcdError {
        let endpoint = endpoint.to_string();
        if e.is_timeout() {
            let timeout_ms = u64::try_from(self.request_timeout.as_millis()).unwrap_or(u64::MAX);
            EtcdError::Timeout {
                endpoint,
                timeout_ms,
            }
        } else if e.is_connect() {
            EtcdError::Unreachable {
                endpoint,
                reason: root_cause(e),
            }
        } else {
            EtcdError::Transport {
                endpoint,
                reason: root_cause(e),
            }
        }
    }
}

/// How much of an unexpected HTTP body an error quotes.
const HTTP_BODY_SHOWN_BYTES: usize = 200;

/// The JSON decoder for a 2xx answer.
pub(crate) fn json<T: DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T, EtcdError> {
    serde_json::from_slice(body).map_err(|e| bad_response(endpoint, e))
}

/// An answer that did not hold what it should.
pub(crate) fn bad_response(endpoint: &str, reason: impl std::fmt::Display) -> EtcdError {
    EtcdError::BadResponse {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    }
}

/// `http://host:port` from `http://host:port`, `http://host:port/` or `host:port`.
fn parse_endpoint(given: &str) -> Result<String, EtcdError> {
    let bad = |reason: &str| EtcdError::BadEndpoint {
        endpoint: given.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = given.trim();
    if trimmed.is_empty() {
        return Err(bad("it is empty; give host:port, like 127.0.0.1:2379"));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(bad(
                "https is not supported yet: stile talks to etcd over plain http",
            ))
        }
        _ => return Err(bad("the scheme must be http")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("give only host and port (and http://), no path"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "user names and passwords in the endpoint are not supported",
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// A rustls configuration with an explicit crypto provider, so that building the client does
/// not depend on a process-wide default provider being installed. No roots: endpoints are
/// http only (see [`parse_endpoint`]).
fn tls_config() -> Result<rustls::ClientConfig, EtcdError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EtcdError::Client(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// The innermost cause of an error, which says what happened ("Connection refused (os error
/// 111)") where reqwest's outer layers repeat the URL.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// An error and its causes, `a: b: c`, which is where reqwest says what actually happened.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_a_scheme_or_not_and_nothing_else() {
        assert_eq!(
            parse_endpoint("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            parse_endpoint(" http://etcd-1:2379/ ").unwrap(),
            "http://etcd-1:2379"
        );
        assert_eq!(parse_endpoint("[::1]:2379").unwrap(), "http://[::1]:2379");
        for bad in [
            "",
            "https://127.0.0.1:2379",
            "ftp://x:1",
            "127.0.0.1:2379/v3",
            "a b:1",
            "u:p@h:1",
        ] {
            assert!(
                matches!(parse_endpoint(bad), Err(EtcdError::BadEndpoint { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn new_refuses_no_endpoints_and_a_zero_timeout() {
        let one = ["127.0.0.1:2379".to_string()];
        assert!(matches!(
            Etcd::new(&[], Duration::from_secs(1)),
            Err(EtcdError::NoEndpoints)
        ));
        assert!(matches!(
            Etcd::new(&one, Duration::ZERO),
            Err(EtcdError::BadTimeout { .. })
        ));
        let many = vec!["127.0.0.1:2379".to_string(); ENDPOINTS_MAX + 1];
        assert!(matches!(
            Etcd::new(&many, Duration::from_secs(1)),
            Err(EtcdError::TooManyEndpoints { .. })
        ));
        let etcd = Etcd::new(&one, Duration::from_secs(1)).unwrap();
        assert_eq!(etcd.current_endpoint(), "http://127.0.0.1:2379");
    }
}
