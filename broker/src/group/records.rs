//! Records of the internal compacted topic `__consumer_offsets`, in Kafka's own
//! format, so that a log written by Kafki reads like one written by Kafka
//! (`kafka-console-consumer --formatter ...OffsetsMessageFormatter` works on it).
//!
//! Schemas (Kafka's `group-coordinator/src/main/resources/common/message/`):
//! - key version 0/1 `OffsetCommitKey`: group (string), topic (string), partition (int32);
//!   value `OffsetCommitValue` v3: offset (int64), leaderEpoch (int32), metadata
//!   (string), commitTimestamp (int64). v0–v2 are decoded too (v1 has an expireTimestamp).
//! - key version 2 `GroupMetadataKey`: group (string); value `GroupMetadataValue` v3:
//!   protocolType (string), generation (int32), protocol (nullable string), leader
//!   (nullable string), currentStateTimestamp (int64), members [memberId,
//!   groupInstanceId (nullable), clientId, clientHost, rebalanceTimeout, sessionTimeout,
//!   subscription (bytes), assignment (bytes)]. v0–v2 are decoded too.
//! - a null value is a tombstone (offset deleted / group deleted).
//!
//! Every field is big-endian; strings carry an int16 length (-1 = null), bytes an int32
//! length, arrays an int32 count (the non-flexible encodings, which is what these versions
//! use). Decoding never trusts a length beyond the bytes left.

use bytes::{BufMut, Bytes, BytesMut};

use crate::schema_reader::{SchemaError, SchemaReader};

/// Key version Kafka uses for offset commits (0 and 1 share a layout).
pub const OFFSET_COMMIT_KEY_VERSION: i16 = 1;
/// Key version of group metadata records.
pub const GROUP_METADATA_KEY_VERSION: i16 = 2;
/// Value version written for offset commits (the one with a leader epoch, no expiry).
pub const OFFSET_COMMIT_VALUE_VERSION: i16 = 3;
/// Value version written for group metadata (the one with group instance ids).
pub const GROUP_METADATA_VALUE_VERSION: i16 = 3;

/// One record for `__consumer_offsets`: the broker wraps these in record batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetsRecord {
    pub key: Bytes,
    /// `None` is a tombstone.
    pub value: Option<Bytes>,
}

/// Why a record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("unknown record version {0}")]
    UnknownVersion(i16),
    /// A field does not read (truncated, not UTF-8, a bad length...).
    #[error(transparent)]
    Field(#[from] SchemaError),
}

/// The decoded key of a `__consumer_offsets` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

/// `OffsetCommitValue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    /// -1 when unknown.
    pub leader_epoch: i32,
    /// Kafka stores a non-null string here: a commit with null metadata stores "".
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// One member inside `GroupMetadataValue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// `GroupMetadataValue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp_ms: i64,
    pub members: Vec<MemberValue>,
}

/// A decoded value (the key says which kind to expect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordValue {
    Offset(OffsetValue),
    Group(GroupValue),
}

// ---------------------------------------------------------------- encoding

fn put_string(buf: &mut BytesMut, value: &str) {
    // Lengths above i16::MAX cannot be represented; callers bound their strings
    // (identifiers and metadata are capped far below 32 KiB by the coordinator).
    let length = i16::try_from(value.len()).unwrap_or(i16::MAX);
    buf.put_i16(length);
    buf.put_slice(&value.as_bytes()[..length as usize]);
}

fn put_nullable_string(buf: &mut BytesMut, value: Option<&str>) {
    match value {
        Some(value) => put_string(buf, value),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, value: &[u8]) {
    let length = i32::try_from(value.len()).unwrap_or(i32::MAX);
    buf.put_i32(length);
    buf.put_slice(&value[..length as usize]);
}

/// Encodes a key in the version Kafka writes for it.
pub fn encode_key(key: &RecordKey) -> Bytes {
    let mut buf = BytesMut::new();
    match key {
        RecordKey::Offset {
            group,
            topic,
            partition,
        } => {
            buf.put_i16(OFFSET_COMMIT_KEY_VERSION);
            put_string(&mut buf, group);
            put_string(&mut buf, topic);
            buf.put_i32(*partition);
        }
        RecordKey::Group { group } => {
            buf.put_i16(GROUP_METADATA_KEY_VERSION);
            put_string(&mut buf, group);
        }
    }
    buf.freeze()
}

/// Encodes an `OffsetCommitValue` v3.
pub fn encode_offset_value(value: &OffsetValue) -> Bytes {
    let mut buf = BytesMut::with_capacity(24 + value.metadata.len());
    buf.put_i16(OFFSET_COMMIT_VALUE_VERSION);
    buf.put_i64(value.offset);
    buf.put_i32(value.leader_epoch);
    put_string(&mut buf, &value.metadata);
    buf.put_i64(value.commit_timestamp_ms);
    buf.freeze()
}

/// Encodes a `GroupMetadataValue` v3.
pub fn encode_group_value(value: &GroupValue) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(GROUP_METADATA_VALUE_VERSION);
    put_string(&mut buf, &value.protocol_type);
    buf.put_i32(value.generation);
    put_nullable_string(&mut buf, value.protocol.as_deref());
    put_nullable_string(&mut buf, value.leader.as_deref());
    buf.put_i64(value.current_state_timestamp_ms);
    buf.put_i32(i32::try_from(value.members.len()).unwrap_or(i32::MAX));
    for member in &value.members {
        put_string(&mut buf, &member.member_id);
        put_nullable_string(&mut buf, member.group_instance_id.as_deref());
        put_string(&mut buf, &member.client_id);
        put_string(&mut buf, &member.client_host);
        buf.put_i32(member.rebalance_timeout_ms);
        buf.put_i32(member.session_timeout_ms);
        put_bytes(&mut buf, &member.subscription);
        put_bytes(&mut buf, &member.assignment);
    }
    buf.freeze()
}

/// Encodes a key and value (or tombstone) into one record.
pub fn encode(key: &RecordKey, value: Option<&RecordValue>) -> OffsetsRecord {
    OffsetsRecord {
        key: encode_key(key),
        value: value.map(|value| match value {
            RecordValue::Offset(offset) => encode_offset_value(offset),
            RecordValue::Group(group) => encode_group_value(group),
        }),
    }
}

// ---------------------------------------------------------------- decoding

/// Decodes a record key.
pub fn decode_key(bytes: &[u8]) -> Result<RecordKey, RecordError> {
    let mut reader = SchemaReader::new(bytes);
    let version = reader.i16()?;
    let key = match version {
        0 | 1 => RecordKey::Offset {
            group: reader.string()?,
            topic: reader.string()?,
            partition: reader.i32()?,
        },
        2 => RecordKey::Group {
            group: reader.string()?,
        },
        other => return Err(RecordError::UnknownVersion(other)),
    };
    reader.finish()?;
    Ok(key)
}

/// Decodes an `OffsetCommitValue` of version 0 to 3.
pub fn decode_offset_value(bytes: &[u8]) -> Result<OffsetValue, RecordError> {
    let mut reader = SchemaReader::new(bytes);
    let version = reader.i16()?;
    if !(0..=3).contains(&version) {
        return Err(RecordError::UnknownVersion(version));
    }
    let offset = reader.i64()?;
    let leader_epoch = if version >= 3 { reader.i32()? } else { -1 };
    let metadata = reader.string()?;
    let commit_timestamp_ms = reader.i64()?;
    if version == 1 {
        let _expire_timestamp_ms = reader.i64()?;
    }
    reader.finish()?;
    Ok(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
    })
}

/// Decodes a `GroupMetadataValue` of version 0 to 3.
pub fn decode_group_value(bytes: &[u8]) -> Result<GroupValue, RecordError> {
    let mut reader = SchemaReader::new(bytes);
    let version = reader.i16()?;
    if !(0..=3).contains(&version) {
        return Err(RecordError::UnknownVersion(version));
    }
    let protocol_type = reader.string()?;
    let generation = reader.i32()?;
    let protocol = reader.nullable_string()?;
    let leader = reader.nullable_string()?;
    let current_state_timestamp_ms = if version >= 2 { reader.i64()? } else { -1 };
    let count = reader.i32()?;
    if count < 0 {
        return Err(SchemaError::NegativeLength(i64::from(count)).into());
    }
    // Each member takes at least 20 bytes, so never reserve more than the bytes can hold.
    let mut members = Vec::with_capacity((count as usize).min(reader.remaining() / 20));
    for _ in 0..count {
        let member_id = reader.string()?;
        let group_instance_id = if version >= 3 {
            reader.nullable_string()?
        } else {
            None
        };
        let client_id = reader.string()?;
        let client_host = reader.string()?;
        let rebalance_timeout_ms = if version >= 1 { reader.i32()? } else { -1 };
        let session_timeout_ms = reader.i32()?;
        let subscription = reader.bytes()?;
        let assignment = reader.bytes()?;
        members.push(MemberValue {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms: if rebalance_timeout_ms < 0 {
                session_timeout_ms
            } else {
                rebalance_timeout_ms
            },
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    reader.finish()?;
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        current_state_timestamp_ms,
        members,
    })
}

/// Decodes a record: its key, and its value unless it is a tombstone.
pub fn decode(
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<(RecordKey, Option<RecordValue>), RecordError> {
    let key = decode_key(key)?;
    let value = match (&key, value) {
        (_, None) => None,
        (RecordKey::Offset { .. }, Some(bytes)) => {
            Some(RecordValue::Offset(decode_offset_value(bytes)?))
        }
        (RecordKey::Group { .. }, Some(bytes)) => {
            Some(RecordValue::Group(decode_group_value(bytes)?))
        }
    };
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn offset_key_golden_bytes() {
        let key = RecordKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 7,
        };
        let bytes = encode_key(&key);
        // version 1, "g", "t", partition 7
        assert_eq!(&bytes[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 7][..]);
        assert_eq!(decode_key(&bytes), Ok(key));
    }

    #[test]
    fn offset_value_golden_bytes() {
        let value = OffsetValue {
            offset: 5,
            leader_epoch: -1,
            metadata: "m".into(),
            commit_timestamp_ms: 9,
        };
        let bytes = encode_offset_value(&value);
        let expected: Vec<u8> = [
            &[0u8, 3][..],
            &5i64.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &[0, 1, b'm'],
            &9i64.to_be_bytes(),
        ]
        .concat();
        assert_eq!(&bytes[..], &expected[..]);
        assert_eq!(decode_offset_value(&bytes), Ok(value));
    }

    #[test]
    fn offset_value_version_1_with_expiry_decodes() {
        let bytes: Vec<u8> = [
            &[0u8, 1][..],
            &42i64.to_be_bytes(),
            &[0, 0],
            &1i64.to_be_bytes(),
            &2i64.to_be_bytes(),
        ]
        .concat();
        let value = decode_offset_value(&bytes).expect("valid v1 value");
        assert_eq!(value.offset, 42);
        assert_eq!(value.leader_epoch, -1);
        assert_eq!(value.metadata, "");
        assert_eq!(value.commit_timestamp_ms, 1);
    }

    #[test]
    fn tombstones_decode_without_value() {
        let key = RecordKey::Group { group: "g".into() };
        let record = encode(&key, None);
        assert_eq!(record.value, None);
        assert_eq!(decode(&record.key, None), Ok((key, None)));
    }

    #[test]
    fn hostile_lengths_are_refused() {
        // group value claiming i32::MAX members in a few bytes
        let mut bytes = vec![0u8, 3, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        bytes.extend_from_slice(&0i64.to_be_bytes());
        bytes.extend_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(
            decode_group_value(&bytes),
            Err(RecordError::Field(SchemaError::Truncated))
        );
        assert_eq!(decode_key(&[0, 9]), Err(RecordError::UnknownVersion(9)));
        assert_eq!(
            decode_key(&[0, 2, 0x7f, 0xff]),
            Err(RecordError::Field(SchemaError::Truncated))
        );
        assert_eq!(
            decode_key(&[0, 2, 0, 0, 1]),
            Err(RecordError::Field(SchemaError::TrailingBytes(1)))
        );
    }

    fn member_strategy() -> impl Strategy<Value = MemberValue> {
        (
            ".{0,12}",
            proptest::option::of(".{0,8}"),
            ".{0,8}",
            ".{0,8}",
            any::<i32>(),
            any::<i32>(),
            proptest::collection::vec(any::<u8>(), 0..32),
            proptest::collection::vec(any::<u8>(), 0..32),
        )
            .prop_map(
                |(member_id, group_instance_id, client_id, client_host, r, s, sub, asg)| {
                    MemberValue {
                        member_id,
                        group_instance_id,
                        client_id,
                        client_host,
                        rebalance_timeout_ms: r.max(0),
                        session_timeout_ms: s,
                        subscription: Bytes::from(sub),
                        assignment: Bytes::from(asg),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn offset_records_round_trip(
            group in ".{0,20}", topic in ".{0,20}", partition in any::<i32>(),
            offset in any::<i64>(), leader_epoch in any::<i32>(), metadata in ".{0,40}",
            commit_timestamp_ms in any::<i64>(),
        ) {
            let key = RecordKey::Offset { group, topic, partition };
            let value = RecordValue::Offset(OffsetValue { offset, leader_epoch, metadata, commit_timestamp_ms });
            let record = encode(&key, Some(&value));
            let decoded = decode(&record.key, record.value.as_deref());
            prop_assert_eq!(decoded, Ok((key, Some(value))));
        }

        #[test]
        fn group_records_round_trip(
            group in ".{0,20}", protocol_type in ".{0,10}", generation in any::<i32>(),
            protocol in proptest::option::of(".{0,10}"), leader in proptest::option::of(".{0,10}"),
            current_state_timestamp_ms in any::<i64>(),
            members in proptest::collection::vec(member_strategy(), 0..5),
        ) {
            let key = RecordKey::Group { group };
            let value = RecordValue::Group(GroupValue {
                protocol_type, generation, protocol, leader, current_state_timestamp_ms, members,
            });
            let record = encode(&key, Some(&value));
            let decoded = decode(&record.key, record.value.as_deref());
            prop_assert_eq!(decoded, Ok((key, Some(value))));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            key in proptest::collection::vec(any::<u8>(), 0..64),
            value in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let _ = decode(&key, Some(&value));
            let _ = decode_group_value(&value);
            let _ = decode_offset_value(&value);
        }
    }
}
