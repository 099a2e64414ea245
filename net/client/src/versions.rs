//! ApiVersions negotiation, pure: from a broker's ApiVersions answer, the version this
//! client uses for each API (the highest version both sides support; ours is what the
//! vendored `kafka-protocol` encodes and decodes, whose floors follow Kafka 4.0: Produce ≥ 3,
//! Fetch ≥ 4).
//!
//! Invariant: a version in an [`ApiVersionTable`] lies in both ranges, so every request the
//! client sends can be encoded and its response decoded.

use kafki_net::kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use crate::error::ClientError;

/// The ApiVersions version the client asks with first. v3 is the first flexible one and
/// what Kafka's own clients send; a broker that does not know it answers in v0 format with
/// `UNSUPPORTED_VERSION` and its range, and we retry at the highest it supports.
pub const API_VERSIONS_PREFERRED: i16 = 3;

/// One API's ranges on both sides and the version picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiatedApi {
    pub api_key: ApiKey,
    pub broker_min: i16,
    pub broker_max: i16,
    /// `None` when the ranges do not overlap.
    pub version: Option<i16>,
}

/// What one broker supports, and the version the client uses per API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiVersionTable {
    /// Indexed by api key; `None` for keys the broker did not list or we do not know.
    entries: Vec<Option<NegotiatedApi>>,
}

impl ApiVersionTable {
    /// Builds the table from a successful ApiVersions answer. Unknown api keys (newer than
    /// the protocol crate) are ignored.
    pub fn from_response(response: &ApiVersionsResponse) -> Self {
        let mut entries: Vec<Option<NegotiatedApi>> = Vec::new();
        for advertised in &response.api_keys {
            let Ok(api_key) = ApiKey::try_from(advertised.api_key) else {
                continue;
            };
            let Ok(index) = usize::try_from(advertised.api_key) else {
                continue;
            };
            let ours = api_key.valid_versions();
            let low = ours.min.max(advertised.min_version);
            let high = ours.max.min(advertised.max_version);
            let negotiated = NegotiatedApi {
                api_key,
                broker_min: advertised.min_version,
                broker_max: advertised.max_version,
                version: (low <= high).then_some(high),
            };
            if entries.len() <= index {
                entries.resize(index + 1, None);
            }
            entries[index] = Some(negotiated);
        }
        Self { entries }
    }

    /// The negotiated entry for `api_key`, if the broker listed it.
    pub fn get(&self, api_key: ApiKey) -> Option<NegotiatedApi> {
        let index = usize::try_from(api_key as i16).ok()?;
        self.entries.get(index).copied().flatten()
    }

    /// The version to use for `api_key`, or why there is none.
    pub fn version_for(&self, api_key: ApiKey, address: &str) -> Result<i16, ClientError> {
        let ours = api_key.valid_versions();
        let unsupported = |broker: String| ClientError::UnsupportedApi {
            address: address.to_string(),
            api_key,
            ours_min: ours.min,
            ours_max: ours.max,
            broker,
        };
        match self.get(api_key) {
            None => Err(unsupported("absent".into())),
            Some(NegotiatedApi {
                version: Some(version),
                ..
            }) => Ok(version),
            Some(entry) => Err(unsupported(format!(
                "v{}-v{}",
                entry.broker_min, entry.broker_max
            ))),
        }
    }

    /// Every API the broker listed, in api-key order.
    pub fn iter(&self) -> impl Iterator<Item = NegotiatedApi> + '_ {
        self.entries.iter().filter_map(|entry| *entry)
    }
}

/// The ApiVersions version to retry with after a broker answered `UNSUPPORTED_VERSION`
/// listing `response` (its own ApiVersions range), if there is one below what we tried.
pub fn api_versions_retry_version(response: &ApiVersionsResponse, tried: i16) -> Option<i16> {
    let broker_max = response
        .api_keys
        .iter()
        .find(|entry| entry.api_key == ApiKey::ApiVersions as i16)
        .map_or(0, |entry| entry.max_version);
    let version = broker_max.min(ApiKey::ApiVersions.valid_versions().max);
    (version < tried && version >= 0).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_net::kafka_protocol::messages::api_versions_response::ApiVersion;

    fn response(entries: &[(i16, i16, i16)]) -> ApiVersionsResponse {
        ApiVersionsResponse::default().with_api_keys(
            entries
                .iter()
                .map(|(key, min, max)| {
                    ApiVersion::default()
                        .with_api_key(*key)
                        .with_min_version(*min)
                        .with_max_version(*max)
                })
                .collect(),
        )
    }

    #[test]
    fn picks_the_highest_common_version() {
        // Produce advertised from v0 (as Kafki does for librdkafka) up to 11: we use 11.
        // Fetch advertised up to 99: we use what kafka-protocol knows.
        let table = ApiVersionTable::from_response(&response(&[(0, 0, 11), (1, 4, 99)]));
        assert_eq!(table.version_for(ApiKey::Produce, "b"), Ok(11));
        assert_eq!(
            table.version_for(ApiKey::Fetch, "b"),
            Ok(ApiKey::Fetch.valid_versions().max)
        );
    }

    #[test]
    fn refuses_absent_and_disjoint_ranges() {
        // Produce only up to v2: below our floor of v3.
        let table = ApiVersionTable::from_response(&response(&[(0, 0, 2)]));
        let disjoint = table.version_for(ApiKey::Produce, "b");
        assert!(
            matches!(&disjoint, Err(ClientError::UnsupportedApi { broker, .. }) if broker == "v0-v2"),
            "{disjoint:?}"
        );
        let absent = table.version_for(ApiKey::Metadata, "b");
        assert!(
            matches!(&absent, Err(ClientError::UnsupportedApi { broker, .. }) if broker == "absent")
        );
        assert!(absent
            .map(|_| ())
            .unwrap_err()
            .to_string()
            .contains("Metadata"));
    }

    #[test]
    fn ignores_unknown_and_negative_keys() {
        let table = ApiVersionTable::from_response(&response(&[(-5, 0, 1), (30_000, 0, 1)]));
        assert_eq!(table.iter().count(), 0);
    }

    #[test]
    fn api_versions_retry_goes_down_only() {
        let old = response(&[(18, 0, 2)]);
        assert_eq!(api_versions_retry_version(&old, 3), Some(2));
        assert_eq!(api_versions_retry_version(&old, 2), None);
        assert_eq!(api_versions_retry_version(&response(&[]), 3), Some(0));
    }
}
