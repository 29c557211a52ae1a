//! Leases: grant, keep alive, revoke.

use crate::client::{bad_response, json, Etcd};
use crate::error::EtcdError;
use crate::kv::lease_gone;
use crate::wire::{KeepAliveMessage, LeaseGrantRequest, LeaseGrantResponse, LeaseIdRequest};
use crate::LEASE_TTL_MAX_S;

/// A lease etcd granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its id, to attach keys to and keep alive.
    pub id: i64,
    /// The TTL granted, seconds: etcd raises a TTL below its minimum (1.5 election timeouts,
    /// rounded up), so this can exceed the one asked for.
    pub ttl_s: i64,
}

impl Etcd {
    /// A new lease that lives `ttl_s` seconds unless kept alive; `ttl_s` from 1 to
    /// [`LEASE_TTL_MAX_S`].
    pub async fn grant(&self, ttl_s: i64) -> Result<Lease, EtcdError> {
        if !(1..=LEASE_TTL_MAX_S).contains(&ttl_s) {
            return Err(EtcdError::BadArgument(format!(
                "a lease TTL must be 1 to {LEASE_TTL_MAX_S} seconds, not {ttl_s}"
            )));
        }
        let request = LeaseGrantRequest {
            ttl_s: ttl_s.to_string(),
        };
        self.call("/v3/lease/grant", &request, |endpoint, body| {
            let r: LeaseGrantResponse = json(endpoint, body)?;
            if !r.error.is_empty() {
                return Err(EtcdError::Server {
                    endpoint: endpoint.to_string(),
                    code: 0,
                    message: r.error,
                });
            }
            if r.id == 0 || r.ttl_s <= 0 {
                return Err(bad_response(
                    endpoint,
                    "a lease grant without an id or a TTL",
                ));
            }
            Ok(Lease {
                id: r.id,
                ttl_s: r.ttl_s,
            })
        })
        .await
    }

    /// Renews `lease` for its granted TTL; returns the TTL left, seconds, always above 0.
    ///
    /// A lease that is gone (expired, revoked, or never granted) is
    /// [`EtcdError::LeaseNotFound`], never `Ok(0)`: a holder that forgets to match the error
    /// cannot take a dead lease for a live one.
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        let request = LeaseIdRequest {
            id: lease.to_string(),
        };
        // The gateway serves the keep-alive stream over one POST: one request in the body
        // gives one JSON message per line in the answer.
        let ttl_s = self
            .call("/v3/lease/keepalive", &request, |endpoint, body| {
                let line = body
                    .split(|&b| b == b'\n')
                    .find(|l| !l.trim_ascii().is_empty());
                let line = line.ok_or_else(|| bad_response(endpoint, "an empty keep-alive"))?;
                let m: KeepAliveMessage = json(endpoint, line)?;
                match (m.result, m.error) {
                    (_, Some(e)) => Err(EtcdError::Server {
                        endpoint: endpoint.to_string(),
                        code: e.grpc_code,
                        message: e.message,
                    }),
                    (Some(r), None) => Ok(r.ttl_s),
                    (None, None) => Err(bad_response(endpoint, "a keep-alive with no result")),
                }
            })
            .await
            .map_err(|e| lease_gone(e, lease))?;
        if ttl_s <= 0 {
            return Err(EtcdError::LeaseNotFound { lease });
        }
        Ok(ttl_s)
    }

    /// Ends `lease` now, deleting every key attached to it. A lease already gone is
    /// [`EtcdError::LeaseNotFound`].
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let request = LeaseIdRequest {
            id: lease.to_string(),
        };
        self.call(
            "/v3/lease/revoke",
            &request,
            json::<crate::wire::HeaderOnly>,
        )
        .await
        .map_err(|e| lease_gone(e, lease))?;
        Ok(())
    }
}
