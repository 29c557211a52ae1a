//! Keys: get one, get a prefix, put, delete.

use crate::client::{bad_response, json, Etcd};
use crate::error::EtcdError;
use crate::wire::{
    b64, prefix_end, unb64, DeleteRequest, HeaderOnly, PutRequest, RangeRequest, RangeResponse,
    WireKv,
};
use crate::RANGE_KVS_MAX;

/// A key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key (since it was last absent): it changes when the key
    /// is deleted and put again, so it names one incarnation of the key.
    pub create_revision: i64,
    /// The revision of the key's last change.
    pub mod_revision: i64,
    /// The lease the key lives by; 0 for none.
    pub lease: i64,
}

impl Kv {
    /// A key from the gateway's form.
    pub(crate) fn from_wire(endpoint: &str, kv: WireKv) -> Result<Kv, EtcdError> {
        let key = unb64(&kv.key).map_err(|e| bad_response(endpoint, e))?;
        let key = String::from_utf8(key)
            .map_err(|e| bad_response(endpoint, format!("a key is not UTF-8: {e}")))?;
        Ok(Kv {
            key,
            value: unb64(&kv.value).map_err(|e| bad_response(endpoint, e))?,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            lease: kv.lease,
        })
    }
}

/// The keys of a range answer.
pub(crate) fn kvs_from_wire(endpoint: &str, r: RangeResponse) -> Result<Vec<Kv>, EtcdError> {
    r.kvs
        .into_iter()
        .map(|kv| Kv::from_wire(endpoint, kv))
        .collect()
}

/// etcd refuses an empty key ("key is not provided"); say so before asking.
pub(crate) fn check_key(key: &str) -> Result<(), EtcdError> {
    if key.is_empty() {
        return Err(EtcdError::BadArgument(
            "an etcd key must not be empty".into(),
        ));
    }
    Ok(())
}

/// A read of one key.
pub(crate) fn range_one(key: &str) -> RangeRequest {
    RangeRequest {
        key: b64(key.as_bytes()),
        range_end: None,
        limit: None,
    }
}

/// A put, with its lease if any.
pub(crate) fn put_request(key: &str, value: &[u8], lease: Option<i64>) -> PutRequest {
    PutRequest {
        key: b64(key.as_bytes()),
        value: b64(value),
        lease: lease.map(|l| l.to_string()),
    }
}

/// A server error naming `lease` as not found becomes [`EtcdError::LeaseNotFound`].
pub(crate) fn lease_gone(e: EtcdError, lease: i64) -> EtcdError {
    match e {
        EtcdError::Server { ref message, .. } if message.contains("lease not found") => {
            EtcdError::LeaseNotFound { lease }
        }
        e => e,
    }
}

impl Etcd {
    /// The key, or `None` when it is absent.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        check_key(key)?;
        self.call("/v3/kv/range", &range_one(key), |endpoint, body| {
            let r: RangeResponse = json(endpoint, body)?;
            Ok(kvs_from_wire(endpoint, r)?.into_iter().next())
        })
        .await
    }

    /// Every key that starts with `prefix`, in key order; refused with
    /// [`EtcdError::TooManyKeys`] past [`RANGE_KVS_MAX`] keys.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        check_key(prefix)?;
        let request = RangeRequest {
            key: b64(prefix.as_bytes()),
            range_end: Some(b64(&prefix_end(prefix.as_bytes()))),
            limit: Some(RANGE_KVS_MAX.to_string()),
        };
        let kvs = self
            .call("/v3/kv/range", &request, |endpoint, body| {
                let r: RangeResponse = json(endpoint, body)?;
                if r.more || r.kvs.len() > RANGE_KVS_MAX {
                    return Err(EtcdError::TooManyKeys {
                        prefix: prefix.to_string(),
                        max: RANGE_KVS_MAX,
                    });
                }
                kvs_from_wire(endpoint, r)
            })
            .await?;
        debug_assert!(kvs.iter().all(|kv| kv.key.starts_with(prefix)));
        Ok(kvs)
    }

    /// Puts `value` at `key`, attached to `lease` if given (the key then vanishes with the
    /// lease); returns the store's revision after the put. An unknown lease gives
    /// [`EtcdError::LeaseNotFound`].
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64, EtcdError> {
        check_key(key)?;
        let request = put_request(key, value, lease);
        let r = self.call("/v3/kv/put", &request, json::<HeaderOnly>).await;
        let r = r.map_err(|e| match lease {
            Some(l) => lease_gone(e, l),
            None => e,
        })?;
        Ok(r.header.revision)
    }

    /// Deletes `key`; deleting an absent key is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        check_key(key)?;
        let request = DeleteRequest {
            key: b64(key.as_bytes()),
        };
        self.call("/v3/kv/deleterange", &request, json::<HeaderOnly>)
            .await?;
        Ok(())
    }
}
