//! The JSON shapes of etcd 3.4's gRPC gateway, sans IO.
//!
//! The gateway maps each protobuf message to JSON with the proto field names (`create_revision`,
//! `request_put`), except the lease messages, whose fields are spelled `ID` and `TTL`. Bytes
//! are base64 (standard alphabet, padded); int64s are decimal strings (we send strings and
//! accept numbers too); a field at its zero value (0, false, empty, the first enum value) is
//! left out, so every field we read has a default. The crate docs list the rest of what the
//! gateway does that a reader might not expect.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

/// Bytes as the gateway wants them: standard base64.
pub(crate) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Bytes back from the gateway's base64.
pub(crate) fn unb64(text: &str) -> Result<Vec<u8>, String> {
    B64.decode(text)
        .map_err(|e| format!("bad base64 {text:?}: {e}"))
}

/// The end of the key range that holds every key starting with `prefix`: the prefix with its
/// last byte below 0xff incremented and what follows it dropped (`[0]`, every key, if there
/// is no such byte), as etcd's clients compute it.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// An int64 as the gateway writes it: a decimal string, or (leniently) a JSON number.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Number(i64),
    }
    match Repr::deserialize(d)? {
        Repr::Number(n) => Ok(n),
        Repr::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// `ResponseHeader`: only the revision is of use to us.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Header {
    /// The store's revision when the request was served (or, in a txn, after it).
    #[serde(default, deserialize_with = "int64")]
    pub revision: i64,
}

/// The error body the gateway answers with a non-2xx status.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    /// The gRPC status message, like `etcdserver: requested lease not found`.
    #[serde(default)]
    pub message: String,
    /// The same text again (the gateway writes both `error` and `message`).
    #[serde(default)]
    pub error: String,
    /// The gRPC status code (5 not found, 3 invalid argument, 14 unavailable…).
    #[serde(default)]
    pub code: i32,
}

impl ErrorBody {
    /// The message, from whichever field carries it.
    pub fn text(&self) -> &str {
        if self.message.is_empty() {
            &self.error
        } else {
            &self.message
        }
    }
}

/// `RangeRequest`: one key, or with `range_end` a range of keys.
#[derive(Debug, Serialize)]
pub(crate) struct RangeRequest {
    /// The key, or the first key of the range (base64).
    pub key: String,
    /// One past the last key of the range (base64); absent for a single key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    /// Most keys to return; 0 (absent) is unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// `RangeResponse`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RangeResponse {
    /// The keys found; the field is absent when none were.
    #[serde(default)]
    pub kvs: Vec<WireKv>,
    /// Whether `limit` cut the answer short.
    #[serde(default)]
    pub more: bool,
}

/// `mvccpb.KeyValue`.
#[derive(Debug, Deserialize)]
pub(crate) struct WireKv {
    /// The key (base64).
    pub key: String,
    /// The value (base64); absent when empty.
    #[serde(default)]
    pub value: String,
    /// The revision of the put that created the key (since it was last absent).
    #[serde(default, deserialize_with = "int64")]
    pub create_revision: i64,
    /// The revision of the key's last change.
    #[serde(default, deserialize_with = "int64")]
    pub mod_revision: i64,
    /// The lease the key is attached to; absent (0) for none.
    #[serde(default, deserialize_with = "int64")]
    pub lease: i64,
}

/// `PutRequest`.
#[derive(Debug, Serialize)]
pub(crate) struct PutRequest {
    /// The key (base64).
    pub key: String,
    /// The value (base64).
    pub value: String,
    /// The lease to attach the key to; absent for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// `DeleteRangeRequest` for one key.
#[derive(Debug, Serialize)]
pub(crate) struct DeleteRequest {
    /// The key (base64).
    pub key: String,
}

/// The answer to a put or a delete: only the header matters to us.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct HeaderOnly {
    /// The revision after the change (unchanged when a delete found nothing).
    #[serde(default)]
    pub header: Header,
}

/// `LeaseGrantRequest`; the field names are upper case on the wire.
#[derive(Debug, Serialize)]
pub(crate) struct LeaseGrantRequest {
    /// The TTL asked for, seconds.
    #[serde(rename = "TTL")]
    pub ttl_s: String,
}

/// `LeaseKeepAliveRequest` and `LeaseRevokeRequest`: a lease id.
#[derive(Debug, Serialize)]
pub(crate) struct LeaseIdRequest {
    /// The lease.
    #[serde(rename = "ID")]
    pub id: String,
}

/// `LeaseGrantResponse`.
#[derive(Debug, Deserialize)]
pub(crate) struct LeaseGrantResponse {
    /// The lease granted.
    #[serde(rename = "ID", default, deserialize_with = "int64")]
    pub id: i64,
    /// The TTL granted, seconds (etcd raises a TTL below its minimum).
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    pub ttl_s: i64,
    /// A refusal text; empty on success.
    #[serde(default)]
    pub error: String,
}

/// One message of the keep-alive stream: `{"result": …}` or `{"error": …}`, both with status
/// 200, because the gateway has sent its headers before the stream's first message.
#[derive(Debug, Deserialize)]
pub(crate) struct KeepAliveMessage {
    /// The keep-alive answer.
    pub result: Option<KeepAliveResult>,
    /// An error met on the stream.
    pub error: Option<StreamError>,
}

/// `LeaseKeepAliveResponse`.
#[derive(Debug, Deserialize)]
pub(crate) struct KeepAliveResult {
    /// The TTL left after the renewal, seconds; absent (0) when the lease is gone.
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    pub ttl_s: i64,
}

/// An error inside a gateway stream.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamError {
    /// The gRPC status code.
    #[serde(default)]
    pub grpc_code: i32,
    /// The status message.
    #[serde(default)]
    pub message: String,
}

/// `Compare`, with its target and result enums as their names.
#[derive(Debug, Serialize)]
pub(crate) struct WireCompare {
    /// The key compared (base64).
    pub key: String,
    /// `CREATE`, `MOD`, `VALUE` or `LEASE`.
    pub target: &'static str,
    /// `EQUAL`, `NOT_EQUAL`, `GREATER` or `LESS`.
    pub result: &'static str,
    /// The operand when the target is `CREATE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<String>,
    /// The operand when the target is `MOD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<String>,
    /// The operand when the target is `VALUE` (base64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The operand when the target is `LEASE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// `RequestOp`: a oneof, so exactly one field.
#[derive(Debug, Serialize)]
pub(crate) enum WireOp {
    /// A put.
    #[serde(rename = "request_put")]
    Put(PutRequest),
    /// A delete of one key.
    #[serde(rename = "request_delete_range")]
    DeleteRange(DeleteRequest),
    /// A read of one key.
    #[serde(rename = "request_range")]
    Range(RangeRequest),
}

/// `TxnRequest`.
#[derive(Debug, Serialize)]
pub(crate) struct TxnRequest {
    /// Every comparison must hold for `success` to run.
    pub compare: Vec<WireCompare>,
    /// Run when every comparison held.
    pub success: Vec<WireOp>,
    /// Run otherwise.
    pub failure: Vec<WireOp>,
}

/// `TxnResponse`.
#[derive(Debug, Deserialize)]
pub(crate) struct TxnResponse {
    /// The revision after the txn.
    #[serde(default)]
    pub header: Header,
    /// Whether the comparisons held; absent means false.
    #[serde(default)]
    pub succeeded: bool,
    /// One answer per op of the branch that ran, in order.
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

/// `ResponseOp`: a oneof; we keep only ranges, the rest carry nothing we use.
#[derive(Debug, Deserialize)]
pub(crate) struct ResponseOp {
    /// Present when the op was a range.
    pub response_range: Option<RangeResponse>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"/stile/a/"), b"/stile/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn range_response_without_kvs_is_empty_and_ints_come_as_strings_or_numbers() {
        let r: RangeResponse =
            serde_json::from_str(r#"{"header":{"cluster_id":"1","revision":"7"}}"#).unwrap();
        assert!(r.kvs.is_empty() && !r.more);
        let r: RangeResponse = serde_json::from_str(
            r#"{"header":{"revision":9},"kvs":[{"key":"Zm9v","create_revision":"2",
                "mod_revision":3,"version":"1","value":"YmFy","lease":"-5"}],"count":"1"}"#,
        )
        .unwrap();
        let kv = &r.kvs[0];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.lease), (2, 3, -5));
        assert_eq!(unb64(&kv.value).unwrap(), b"bar");
        assert!(serde_json::from_str::<HeaderOnly>(r#"{"header":{"revision":"x"}}"#).is_err());
        let h: HeaderOnly = serde_json::from_str(r#"{"header":{"revision":"7"}}"#).unwrap();
        assert_eq!(h.header.revision, 7);
    }

    #[test]
    fn txn_request_names_ops_and_enums_as_the_gateway_wants() {
        let t = TxnRequest {
            compare: vec![WireCompare {
                key: b64(b"k"),
                target: "CREATE",
                result: "EQUAL",
                create_revision: Some("0".into()),
                mod_revision: None,
                value: None,
                lease: None,
            }],
            success: vec![WireOp::Put(PutRequest {
                key: b64(b"k"),
                value: b64(b"v"),
                lease: Some("12".into()),
            })],
            failure: vec![WireOp::Range(RangeRequest {
                key: b64(b"k"),
                range_end: None,
                limit: None,
            })],
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"compare":[{"key":"aw==","target":"CREATE","result":"EQUAL","create_revision":"0"}],"success":[{"request_put":{"key":"aw==","value":"dg==","lease":"12"}}],"failure":[{"request_range":{"key":"aw=="}}]}"#
        );
    }

    #[test]
    fn txn_response_without_succeeded_is_a_failure() {
        let r: TxnResponse = serde_json::from_str(
            r#"{"header":{"revision":"6"},"responses":[{"response_range":{"header":{"revision":"6"},
                "kvs":[{"key":"L2w=","create_revision":"6","mod_revision":"6","value":"bWU="}]}},
                {"response_put":{"header":{"revision":"6"}}}]}"#,
        )
        .unwrap();
        assert!(!r.succeeded);
        assert_eq!(r.responses.len(), 2);
        assert_eq!(r.responses[0].response_range.as_ref().unwrap().kvs.len(), 1);
        assert!(r.responses[1].response_range.is_none());
    }

    #[test]
    fn lease_messages_use_upper_case_names_and_a_gone_lease_has_no_ttl() {
        let g: LeaseGrantResponse =
            serde_json::from_str(r#"{"header":{},"ID":"8967971209941661192","TTL":"5"}"#).unwrap();
        assert_eq!((g.id, g.ttl_s), (8967971209941661192, 5));
        let k: KeepAliveMessage =
            serde_json::from_str(r#"{"result":{"header":{},"ID":"8967971209941661194"}}"#).unwrap();
        assert_eq!(k.result.unwrap().ttl_s, 0);
        let e: KeepAliveMessage = serde_json::from_str(
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}"#,
        )
        .unwrap();
        assert_eq!(e.error.unwrap().grpc_code, 14);
        assert_eq!(
            serde_json::to_string(&LeaseIdRequest { id: "3".into() }).unwrap(),
            r#"{"ID":"3"}"#
        );
    }
}
