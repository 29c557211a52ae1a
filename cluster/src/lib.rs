//! stile's client for etcd v3, through etcd's JSON gateway, and the shard keys stile keeps
//! there.
//!
//! Every call is one HTTP POST of JSON to `/v3/...` on one of the cluster's client URLs, so
//! the build needs no protoc and no gRPC stack. [`Etcd`] walks the endpoints (see its docs);
//! [`keys`] says where a stile cluster keeps leader, sync standby and members; [`status`]
//! reads them back for operators; `testing` (feature `testing`) starts real etcd members.
//!
//! What etcd 3.4's gateway does that one might not expect (each checked with curl against
//! etcd 3.4.23):
//! - paths: `/v3/kv/range`, `/v3/kv/put`, `/v3/kv/deleterange`, `/v3/kv/txn`,
//!   `/v3/lease/grant`, `/v3/lease/keepalive`, `/v3/lease/revoke` (revoke and time-to-live
//!   also answer under `/v3/kv/lease/...`); an unknown path is a plain-text `404 Not Found`;
//! - bytes are base64, int64s decimal strings; fields at their zero value are left out: a
//!   range that finds nothing has no `kvs`, a failed txn no `succeeded`, a key without lease
//!   no `lease`;
//! - field names are the proto's snake case (`create_revision`, `request_put`,
//!   `response_range`), except the lease messages' `ID` and `TTL`;
//! - keep-alive is a stream: the answer is `{"result":{…}}` per line, status 200, and a lease
//!   that is gone still answers 200, with its `TTL` left out;
//! - errors are `{"error":…,"message":…,"code":N}` with gRPC codes and HTTP statuses (5 →
//!   404, 3 → 400, 14 → 503); a write to a member without quorum waits about 6 s and then
//!   answers `context deadline exceeded` with code 2 and HTTP 500;
//! - a lease TTL below etcd's minimum (1.5 election timeouts, rounded up to seconds), even
//!   zero or negative, is granted at the minimum.

mod client;
mod error;
pub mod keys;
mod kv;
mod lease;
pub mod status;
#[cfg(feature = "testing")]
pub mod testing;
mod txn;
mod wire;

use std::time::Duration;

pub use client::Etcd;
pub use error::EtcdError;
pub use keys::{MemberInfo, NameError, Role, ShardKeys};
pub use kv::Kv;
pub use lease::Lease;
pub use status::{cluster_status, ShardStatus, StatusTable};
pub use txn::{Cmp, Compare, TxnOp, TxnResult};

/// Most endpoints one client walks.
pub const ENDPOINTS_MAX: usize = 16;
/// Longest request timeout allowed.
pub const REQUEST_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// Largest request body sent: etcd's default `--max-request-bytes` (1.5 MiB).
pub const REQUEST_BYTES_MAX: usize = 1536 * 1024;
/// Largest response body read; anything longer is refused unread.
pub const RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most keys one prefix read returns.
pub const RANGE_KVS_MAX: usize = 10_000;
/// Most comparisons, and most ops per branch, in one txn: etcd's default `--max-txn-ops`.
pub const TXN_OPS_MAX: usize = 128;
/// Longest lease TTL etcd grants, seconds.
pub const LEASE_TTL_MAX_S: i64 = 9_000_000_000;
