//! What can go wrong talking to etcd, said so that an operator knows what to do.

use crate::keys::NameError;

/// An error from the etcd client.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// `Etcd::new` was given no endpoint.
    #[error("no etcd endpoint given: pass at least one, like 127.0.0.1:2379")]
    NoEndpoints,
    /// More endpoints than [`crate::ENDPOINTS_MAX`].
    #[error("{count} etcd endpoints given; at most {max} are supported")]
    TooManyEndpoints {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An endpoint that is not `http://host:port` or `host:port`.
    #[error("etcd endpoint {endpoint:?} is not usable: {reason}")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request timeout of zero or above [`crate::REQUEST_TIMEOUT_MAX`].
    #[error(
        "the etcd request timeout must be more than 0 and at most {max_s} s, not {timeout_ms} ms"
    )]
    BadTimeout {
        /// The timeout given, ms.
        timeout_ms: u128,
        /// The limit, seconds.
        max_s: u64,
    },
    /// The HTTP client could not be built.
    #[error("could not set up the HTTP client for etcd: {0}")]
    Client(String),
    /// A cluster, shard or node name that is not allowed in a key.
    #[error(transparent)]
    Name(#[from] NameError),
    /// An argument etcd would refuse or stile does not allow (a TTL out of range, too many
    /// txn ops); the text says which.
    #[error("{0}")]
    BadArgument(String),
    /// A request larger than etcd accepts by default.
    #[error("the request to etcd would be {bytes} bytes, over etcd's limit of {max} bytes")]
    RequestTooLarge {
        /// Its size.
        bytes: usize,
        /// The limit, [`crate::REQUEST_BYTES_MAX`].
        max: usize,
    },
    /// Nothing accepted the connection.
    #[error(
        "could not connect to etcd at {endpoint}: {reason} (is etcd running and listening there?)"
    )]
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// The connection error.
        reason: String,
    },
    /// No whole answer within the request timeout.
    #[error("etcd at {endpoint} did not answer within {timeout_ms} ms")]
    Timeout {
        /// The endpoint tried.
        endpoint: String,
        /// The request timeout, ms.
        timeout_ms: u64,
    },
    /// The connection broke during the exchange.
    #[error("the exchange with etcd at {endpoint} broke off: {reason}")]
    Transport {
        /// The endpoint tried.
        endpoint: String,
        /// What broke.
        reason: String,
    },
    /// An HTTP answer without the gateway's error body (something else listens there, or
    /// this etcd has no v3 JSON gateway at that path).
    #[error("etcd at {endpoint} answered HTTP {status} without an etcd error: {body:?} (is it etcd 3.4 or later?)")]
    Http {
        /// The endpoint tried.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// etcd refused the request with a gRPC error.
    #[error("etcd at {endpoint} refused the request: {message} (gRPC code {code})")]
    Server {
        /// The endpoint that answered.
        endpoint: String,
        /// The gRPC status code (3 invalid argument, 5 not found, 14 unavailable…).
        code: i32,
        /// etcd's message, like `etcdserver: requested lease not found`.
        message: String,
    },
    /// The lease is not in etcd any more: it expired or was revoked (or never existed).
    #[error(
        "lease {lease} ({lease:x} in etcdctl's hex) is not in etcd: it expired or was revoked"
    )]
    LeaseNotFound {
        /// The lease.
        lease: i64,
    },
    /// An answer over [`crate::RESPONSE_BYTES_MAX`].
    #[error("etcd at {endpoint} sent an answer over {max} bytes; stile does not read that much")]
    ResponseTooLarge {
        /// The endpoint that answered.
        endpoint: String,
        /// The limit.
        max: usize,
    },
    /// An answer that does not parse as what the request expects.
    #[error("etcd at {endpoint} sent an answer stile cannot read: {reason}")]
    BadResponse {
        /// The endpoint that answered.
        endpoint: String,
        /// What did not parse.
        reason: String,
    },
    /// A prefix holding more than [`crate::RANGE_KVS_MAX`] keys.
    #[error("more than {max} keys start with {prefix:?}; stile reads at most that many at once")]
    TooManyKeys {
        /// The prefix read.
        prefix: String,
        /// The limit.
        max: usize,
    },
    /// Every endpoint failed with an error worth trying elsewhere; one error per endpoint,
    /// in the order tried. (A client of one endpoint returns that endpoint's error itself.)
    #[error("no etcd endpoint answered: {}", join(.0))]
    Unavailable(Vec<EtcdError>),
}

/// The errors, one after the other.
fn join(errors: &[EtcdError]) -> String {
    let texts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    texts.join("; ")
}

impl EtcdError {
    /// Whether the same request may succeed on another endpoint or a little later: the
    /// endpoint could not be reached, did not answer in time, broke off, answered a server
    /// error that is not etcd's, or etcd said it has no leader, lost it, or timed out
    /// waiting for the cluster.
    ///
    /// A request that timed out or broke off may have been applied all the same.
    pub fn is_transient(&self) -> bool {
        match self {
            EtcdError::Unreachable { .. }
            | EtcdError::Timeout { .. }
            | EtcdError::Transport { .. }
            | EtcdError::Unavailable(_) => true,
            EtcdError::Http { status, .. } => *status >= 500,
            EtcdError::Server { code, message, .. } => server_error_is_transient(*code, message),
            _ => false,
        }
    }
}

/// gRPC `Unavailable`, the code etcd gives "no leader", "leader changed" and "request timed
/// out".
const GRPC_UNAVAILABLE: i32 = 14;
/// gRPC `DeadlineExceeded`.
const GRPC_DEADLINE_EXCEEDED: i32 = 4;

/// Whether an etcd error says the cluster (or this member's view of it) is in the way, not
/// the request: then another member may serve it. etcd 3.4 answers a write to a member
/// without quorum `context deadline exceeded` with code 2 (unknown), so the text counts too.
pub(crate) fn server_error_is_transient(code: i32, message: &str) -> bool {
    code == GRPC_UNAVAILABLE
        || code == GRPC_DEADLINE_EXCEEDED
        || [
            "no leader",
            "leader changed",
            "timed out",
            "deadline exceeded",
        ]
        .iter()
        .any(|t| message.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_loss_and_quorum_timeouts_are_transient_and_refusals_are_not() {
        assert!(server_error_is_transient(
            14,
            "etcdserver: request timed out"
        ));
        assert!(server_error_is_transient(2, "context deadline exceeded"));
        assert!(server_error_is_transient(2, "etcdserver: leader changed"));
        assert!(!server_error_is_transient(
            5,
            "etcdserver: requested lease not found"
        ));
        assert!(!server_error_is_transient(
            3,
            "etcdserver: key is not provided"
        ));
    }
}
