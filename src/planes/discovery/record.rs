//! Instance records: what a worker writes under `/services/` for each endpoint it serves.
//!
//! Key: `/services/{namespace}/{component}/{endpoint}/{instance_id as lowercase hex}`
//! (the [`EndpointPath`] display, as on the request-plane wire). Value, JSON:
//!
//! ```json
//! {"namespace":"dynamo","component":"backend","endpoint":"generate","instance_id":1234,
//!  "transport":{"type":"tcp","address":"10.0.0.5:40123"}}
//! ```
//!
//! or, on the NATS request plane, `"transport":{"type":"nats","address":"pw.rq.dynamo.backend.generate.4d2"}`.
//! Discovery stores the tag and the address and knows no client: routing
//! ([`crate::planes::routing`]) reads the tag to pick the plane.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::DiscoveryError;
use crate::vocab::EndpointPath;

/// Every instance record lives under this prefix.
pub const SERVICES_PREFIX: &str = "/services/";

/// How to reach an instance: the request plane's name (`"type"`: `tcp`, `nats`, `http`,
/// as `DYN_REQUEST_PLANE` spells it) and what that plane's client is given (`host:port`
/// on TCP and HTTP/2, a subject on NATS). A tag a reader does not know is kept, so
/// records of newer planes still parse.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transport {
    #[serde(rename = "type")]
    pub plane: String,
    /// Records written before the address was plane-neutral call it `subject` on NATS.
    #[serde(alias = "subject")]
    pub address: String,
}

impl Transport {
    pub fn new(plane: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            plane: plane.into(),
            address: address.into(),
        }
    }

    /// The address a request-plane client of this transport is given.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// One endpoint instance, as stored in discovery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub namespace: String,
    pub component: String,
    pub endpoint: String,
    pub instance_id: u64,
    pub transport: Transport,
}

impl InstanceRecord {
    pub fn new(path: &EndpointPath, transport: Transport) -> Self {
        Self {
            namespace: path.namespace().to_owned(),
            component: path.component().to_owned(),
            endpoint: path.endpoint().to_owned(),
            instance_id: path.instance_id(),
            transport,
        }
    }

    /// The request-plane path of this instance.
    pub fn path(&self) -> Result<EndpointPath, DiscoveryError> {
        Ok(EndpointPath::new(
            &self.namespace,
            &self.component,
            &self.endpoint,
            self.instance_id,
        )?)
    }

    /// Where the record is stored.
    pub fn key(&self) -> Result<String, DiscoveryError> {
        Ok(instance_key(&self.path()?))
    }

    pub fn to_json(&self) -> Bytes {
        // A struct of strings and integers always serializes.
        Bytes::from(serde_json::to_vec(self).expect("instance record serializes"))
    }

    /// Parses the value stored at `key`, checking that it describes that key: a record
    /// copied under another key would route requests to the wrong endpoint.
    pub fn from_key_value(key: &str, value: &[u8]) -> Result<Self, DiscoveryError> {
        let invalid = |reason: String| DiscoveryError::InvalidRecord {
            key: key.to_owned(),
            reason,
        };
        let record: Self =
            serde_json::from_slice(value).map_err(|e| invalid(format!("bad JSON: {e}")))?;
        let path = record.path().map_err(|e| invalid(e.to_string()))?;
        if instance_key(&path) != key {
            return Err(invalid(format!("the record describes {path}")));
        }
        Ok(record)
    }
}

/// `/services/{namespace}/{component}/{endpoint}/{instance_id:x}`.
pub fn instance_key(path: &EndpointPath) -> String {
    format!("{SERVICES_PREFIX}{path}")
}

/// The prefix of every instance of one endpoint, ending in `/`; the segments are
/// checked as [`EndpointPath::new`] checks them.
pub fn endpoint_prefix(
    namespace: &str,
    component: &str,
    endpoint: &str,
) -> Result<String, DiscoveryError> {
    let path = EndpointPath::new(namespace, component, endpoint, 0)?;
    Ok(format!(
        "{SERVICES_PREFIX}{}/{}/{}/",
        path.namespace(),
        path.component(),
        path.endpoint()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> InstanceRecord {
        let path = EndpointPath::new("dynamo", "backend", "generate", 0xabc).unwrap();
        InstanceRecord::new(&path, Transport::new("tcp", "127.0.0.1:4000"))
    }

    #[test]
    fn json_and_key_have_the_documented_shape() {
        let record = record();
        assert_eq!(
            record.key().unwrap(),
            "/services/dynamo/backend/generate/abc"
        );
        let json: serde_json::Value = serde_json::from_slice(&record.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "namespace": "dynamo", "component": "backend", "endpoint": "generate",
                "instance_id": 0xabc,
                "transport": {"type": "tcp", "address": "127.0.0.1:4000"}
            })
        );
    }

    #[test]
    fn parsing_round_trips_and_checks_the_key() {
        let record = record();
        let key = record.key().unwrap();
        let parsed = InstanceRecord::from_key_value(&key, &record.to_json()).unwrap();
        assert_eq!(parsed, record);
        let elsewhere = "/services/dynamo/backend/generate/abd";
        let err = InstanceRecord::from_key_value(elsewhere, &record.to_json()).unwrap_err();
        assert!(err.to_string().contains("describes"), "{err}");
        let err = InstanceRecord::from_key_value(&key, b"{not json").unwrap_err();
        assert!(err.to_string().contains("bad JSON"), "{err}");
        let incomplete = br#"{"namespace":"a","component":"b","endpoint":"c","instance_id":1,
            "transport":{"type":"carrier-pigeon"}}"#;
        assert!(InstanceRecord::from_key_value("/services/a/b/c/1", incomplete).is_err());
    }

    #[test]
    fn unknown_planes_parse_and_old_nats_records_read_their_subject() {
        let newer = br#"{"namespace":"a","component":"b","endpoint":"c","instance_id":1,
            "transport":{"type":"quic","address":"10.0.0.1:9"}}"#;
        let record = InstanceRecord::from_key_value("/services/a/b/c/1", newer).unwrap();
        assert_eq!(record.transport, Transport::new("quic", "10.0.0.1:9"));
        let old = br#"{"namespace":"a","component":"b","endpoint":"c","instance_id":1,
            "transport":{"type":"nats","subject":"pw.rq.a.b.c.1"}}"#;
        let record = InstanceRecord::from_key_value("/services/a/b/c/1", old).unwrap();
        assert_eq!(record.transport, Transport::new("nats", "pw.rq.a.b.c.1"));
    }

    #[test]
    fn endpoint_prefix_refuses_bad_segments() {
        assert_eq!(endpoint_prefix("a", "b", "c").unwrap(), "/services/a/b/c/");
        assert!(endpoint_prefix("a/x", "b", "c").is_err());
        assert!(endpoint_prefix("a", "", "c").is_err());
    }
}
