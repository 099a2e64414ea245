//! Newtypes for numbers on the wire that mean something, and the table of supported APIs
//! the broker hands to the decoder.
//!
//! Invariant: a [`SupportedApis`] table holds at most one range per API key, and every range
//! has `min_version <= max_version` (checked at construction).

use std::fmt;

use kafka_protocol::messages::ApiKey;

/// The id a client puts in a request header; the response must echo it unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CorrelationId(pub i32);

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One API the broker answers, and the versions it advertises for it (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupportedApi {
    pub api_key: ApiKey,
    pub min_version: i16,
    pub max_version: i16,
}

impl SupportedApi {
    pub const fn new(api_key: ApiKey, min_version: i16, max_version: i16) -> Self {
        Self {
            api_key,
            min_version,
            max_version,
        }
    }

    pub const fn contains(&self, api_version: i16) -> bool {
        self.min_version <= api_version && api_version <= self.max_version
    }
}

/// Why a [`SupportedApis`] table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupportedApisError {
    #[error("{api_key:?} is listed twice")]
    Duplicate { api_key: ApiKey },
    #[error("{api_key:?} has min version {min_version} above max version {max_version}")]
    EmptyRange {
        api_key: ApiKey,
        min_version: i16,
        max_version: i16,
    },
}

/// The broker's table of supported (api key, min version, max version), in the order given
/// (which is the order ApiVersions advertises them in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportedApis {
    entries: Vec<SupportedApi>,
}

impl SupportedApis {
    pub fn new(entries: Vec<SupportedApi>) -> Result<Self, SupportedApisError> {
        for (index, entry) in entries.iter().enumerate() {
            if entry.min_version > entry.max_version {
                return Err(SupportedApisError::EmptyRange {
                    api_key: entry.api_key,
                    min_version: entry.min_version,
                    max_version: entry.max_version,
                });
            }
            if entries[..index].iter().any(|e| e.api_key == entry.api_key) {
                return Err(SupportedApisError::Duplicate {
                    api_key: entry.api_key,
                });
            }
        }
        Ok(Self { entries })
    }

    /// The supported range for `api_key`, if the broker answers it at all.
    pub fn get(&self, api_key: ApiKey) -> Option<SupportedApi> {
        self.entries.iter().copied().find(|e| e.api_key == api_key)
    }

    pub fn entries(&self) -> &[SupportedApi] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_refuses_duplicates_and_empty_ranges() {
        let duplicate = SupportedApis::new(vec![
            SupportedApi::new(ApiKey::Produce, 0, 13),
            SupportedApi::new(ApiKey::Produce, 3, 13),
        ]);
        assert_eq!(
            duplicate,
            Err(SupportedApisError::Duplicate {
                api_key: ApiKey::Produce
            })
        );
        let empty = SupportedApis::new(vec![SupportedApi::new(ApiKey::Fetch, 5, 4)]);
        assert!(matches!(empty, Err(SupportedApisError::EmptyRange { .. })));
    }

    #[test]
    fn lookup_finds_ranges() {
        let table = SupportedApis::new(vec![
            SupportedApi::new(ApiKey::ApiVersions, 0, 4),
            SupportedApi::new(ApiKey::Metadata, 0, 12),
        ])
        .expect("valid table");
        assert_eq!(table.get(ApiKey::Metadata).map(|e| e.max_version), Some(12));
        assert!(table.get(ApiKey::Fetch).is_none());
        assert!(table
            .get(ApiKey::ApiVersions)
            .is_some_and(|e| e.contains(4)));
        assert!(!table
            .get(ApiKey::ApiVersions)
            .is_some_and(|e| e.contains(5)));
    }
}
