//! Transactions: if every comparison holds, run one list of ops, else the other.

use crate::client::{bad_response, json, Etcd};
use crate::error::EtcdError;
use crate::kv::{check_key, kvs_from_wire, put_request, range_one, Kv};
use crate::wire::{b64, DeleteRequest, TxnRequest, TxnResponse, WireCompare, WireOp};
use crate::TXN_OPS_MAX;

/// A comparison against a key as it is when the txn runs. An absent key has create
/// revision, mod revision and lease 0, and no value (a `Value` comparison on it is false).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's create revision (0: absent).
    CreateRevision(String, Cmp, i64),
    /// The key's mod revision (0: absent).
    ModRevision(String, Cmp, i64),
    /// The key's value, bytewise.
    Value(String, Cmp, Vec<u8>),
    /// The key's lease (0: none).
    Lease(String, Cmp, i64),
}

/// How the key's field compares to the operand: `field CMP operand`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

/// An op of a txn branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Put `value` at `key`, attached to `lease` if given.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The lease the key lives by, if any.
        lease: Option<i64>,
    },
    /// Delete `key` (absent is fine).
    Delete {
        /// The key.
        key: String,
    },
    /// Read `key`; its answer is one entry of [`TxnResult::gets`].
    Get {
        /// The key.
        key: String,
    },
}

/// What a txn did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every comparison held, so the success branch ran.
    pub succeeded: bool,
    /// The store's revision after the txn: the revision of its writes, if it wrote.
    pub revision: i64,
    /// One entry per `Get` of the branch that ran, in op order: the key, or empty if absent.
    pub gets: Vec<Vec<Kv>>,
}

impl Compare {
    /// The gateway's form.
    fn to_wire(&self) -> WireCompare {
        let (key, cmp) = match self {
            Compare::CreateRevision(k, c, _)
            | Compare::ModRevision(k, c, _)
            | Compare::Value(k, c, _)
            | Compare::Lease(k, c, _) => (k, c),
        };
        let mut w = WireCompare {
            key: b64(key.as_bytes()),
            target: "",
            result: cmp.wire_name(),
            create_revision: None,
            mod_revision: None,
            value: None,
            lease: None,
        };
        match self {
            Compare::CreateRevision(_, _, n) => {
                (w.target, w.create_revision) = ("CREATE", Some(n.to_string()))
            }
            Compare::ModRevision(_, _, n) => {
                (w.target, w.mod_revision) = ("MOD", Some(n.to_string()))
            }
            Compare::Value(_, _, v) => (w.target, w.value) = ("VALUE", Some(b64(v))),
            Compare::Lease(_, _, n) => (w.target, w.lease) = ("LEASE", Some(n.to_string())),
        }
        w
    }

    /// The key compared.
    fn key(&self) -> &str {
        match self {
            Compare::CreateRevision(k, ..)
            | Compare::ModRevision(k, ..)
            | Compare::Value(k, ..)
            | Compare::Lease(k, ..) => k,
        }
    }
}

impl Cmp {
    /// The name of `Compare.CompareResult` on the wire.
    fn wire_name(self) -> &'static str {
        match self {
            Cmp::Equal => "EQUAL",
            Cmp::NotEqual => "NOT_EQUAL",
            Cmp::Greater => "GREATER",
            Cmp::Less => "LESS",
        }
    }
}

impl TxnOp {
    /// The gateway's form.
    fn to_wire(&self) -> WireOp {
        match self {
            TxnOp::Put { key, value, lease } => WireOp::Put(put_request(key, value, *lease)),
            TxnOp::Delete { key } => WireOp::DeleteRange(DeleteRequest {
                key: b64(key.as_bytes()),
            }),
            TxnOp::Get { key } => WireOp::Range(range_one(key)),
        }
    }

    /// The key the op touches.
    fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key,
        }
    }
}

/// Refuses what etcd would: empty keys, and more than [`TXN_OPS_MAX`] comparisons or ops in a
/// branch.
fn check(compare: &[Compare], success: &[TxnOp], failure: &[TxnOp]) -> Result<(), EtcdError> {
    for (what, count) in [
        ("comparisons", compare.len()),
        ("success ops", success.len()),
        ("failure ops", failure.len()),
    ] {
        if count > TXN_OPS_MAX {
            return Err(EtcdError::BadArgument(format!(
                "a txn may hold at most {TXN_OPS_MAX} {what}, not {count}"
            )));
        }
    }
    compare
        .iter()
        .map(Compare::key)
        .chain(success.iter().chain(failure).map(TxnOp::key))
        .try_for_each(check_key)
}

impl Etcd {
    /// If every comparison in `compare` holds, runs `success`, else `failure`, atomically.
    ///
    /// Like every call, a txn goes to the next endpoint when one times out or loses its
    /// leader, and such a txn may have been applied all the same: the answer then describes
    /// the retry, which may fail only because the first attempt succeeded. A caller whose
    /// txn claims something (the leader key, say) should put a `Get` of that key in its
    /// failure branch and check whether the key already holds its own claim (its name and
    /// its lease).
    pub async fn txn(
        &self,
        compare: &[Compare],
        success: &[TxnOp],
        failure: &[TxnOp],
    ) -> Result<TxnResult, EtcdError> {
        check(compare, success, failure)?;
        let request = TxnRequest {
            compare: compare.iter().map(Compare::to_wire).collect(),
            success: success.iter().map(TxnOp::to_wire).collect(),
            failure: failure.iter().map(TxnOp::to_wire).collect(),
        };
        self.call("/v3/kv/txn", &request, |endpoint, body| {
            let r: TxnResponse = json(endpoint, body)?;
            let gets: Vec<Vec<Kv>> = r
                .responses
                .into_iter()
                .filter_map(|op| op.response_range)
                .map(|range| kvs_from_wire(endpoint, range))
                .collect::<Result<_, _>>()?;
            let branch = if r.succeeded { success } else { failure };
            let expected = branch
                .iter()
                .filter(|op| matches!(op, TxnOp::Get { .. }))
                .count();
            if gets.len() != expected {
                let reason = format!("{} range answers for {expected} gets", gets.len());
                return Err(bad_response(endpoint, reason));
            }
            Ok(TxnResult {
                succeeded: r.succeeded,
                revision: r.header.revision,
                gets,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_comparison_sends_its_target_and_operand_field() {
        let json = |c: Compare| serde_json::to_string(&c.to_wire()).unwrap();
        assert_eq!(
            json(Compare::CreateRevision("k".into(), Cmp::Equal, 0)),
            r#"{"key":"aw==","target":"CREATE","result":"EQUAL","create_revision":"0"}"#
        );
        assert_eq!(
            json(Compare::ModRevision("k".into(), Cmp::Greater, 5)),
            r#"{"key":"aw==","target":"MOD","result":"GREATER","mod_revision":"5"}"#
        );
        assert_eq!(
            json(Compare::Value("k".into(), Cmp::NotEqual, b"v".to_vec())),
            r#"{"key":"aw==","target":"VALUE","result":"NOT_EQUAL","value":"dg=="}"#
        );
        assert_eq!(
            json(Compare::Lease("k".into(), Cmp::Less, 7)),
            r#"{"key":"aw==","target":"LEASE","result":"LESS","lease":"7"}"#
        );
    }

    #[test]
    fn empty_keys_and_oversized_branches_are_refused_before_sending() {
        let get = |k: &str| TxnOp::Get { key: k.into() };
        assert!(check(&[], &[get("a")], &[]).is_ok());
        assert!(check(&[], &[get("")], &[]).is_err());
        assert!(check(&[Compare::Lease(String::new(), Cmp::Equal, 0)], &[], &[]).is_err());
        assert!(check(&[], &[], &vec![get("a"); TXN_OPS_MAX + 1]).is_err());
    }
}
