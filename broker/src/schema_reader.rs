//! A bounds-checked reader of the Kafka-schema encoding of internal records
//! (the keys and values of `__consumer_offsets` and `__transaction_state`):
//! big-endian integers, strings with an i16 or varint length, bytes,
//! tagged fields. Every read checks the bytes left first and every count
//! is checked against them before anything is allocated, so hostile bytes
//! give an error, never a panic or a huge allocation.

use bytes::Bytes;

/// Why a field could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("record truncated")]
    Truncated,
    #[error("string is not UTF-8")]
    NotUtf8,
    #[error("negative length {0}")]
    NegativeLength(i64),
    #[error("null where a value is required")]
    UnexpectedNull,
    #[error("varint too long")]
    VarintTooLong,
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
}

/// A cursor over one record's bytes.
pub struct SchemaReader<'a> {
    bytes: &'a [u8],
}

impl<'a> SchemaReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub fn take(&mut self, count: usize) -> Result<&'a [u8], SchemaError> {
        if self.bytes.len() < count {
            return Err(SchemaError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], SchemaError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    pub fn i8(&mut self) -> Result<i8, SchemaError> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    pub fn i16(&mut self) -> Result<i16, SchemaError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Result<i32, SchemaError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, SchemaError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub fn unsigned_varint(&mut self) -> Result<u32, SchemaError> {
        let mut value: u32 = 0;
        for shift in (0..35).step_by(7) {
            let byte = self.array::<1>()?[0];
            value |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SchemaError::VarintTooLong)
    }

    fn utf8(raw: &[u8]) -> Result<String, SchemaError> {
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| SchemaError::NotUtf8)
    }

    /// A string with an i16 length, -1 meaning null.
    pub fn nullable_string(&mut self) -> Result<Option<String>, SchemaError> {
        let length = self.i16()?;
        if length == -1 {
            return Ok(None);
        }
        if length < 0 {
            return Err(SchemaError::NegativeLength(i64::from(length)));
        }
        Self::utf8(self.take(length as usize)?).map(Some)
    }

    pub fn string(&mut self) -> Result<String, SchemaError> {
        self.nullable_string()?.ok_or(SchemaError::UnexpectedNull)
    }

    /// A string with a varint length + 1 (flexible versions), not null.
    pub fn compact_string(&mut self) -> Result<String, SchemaError> {
        let length_plus_one = self.unsigned_varint()?;
        if length_plus_one == 0 {
            return Err(SchemaError::UnexpectedNull);
        }
        Self::utf8(self.take(length_plus_one as usize - 1)?)
    }

    /// Bytes with an i32 length (not nullable in these schemas).
    pub fn bytes(&mut self) -> Result<Bytes, SchemaError> {
        let length = self.i32()?;
        if length < 0 {
            return Err(SchemaError::NegativeLength(i64::from(length)));
        }
        Ok(Bytes::copy_from_slice(self.take(length as usize)?))
    }

    /// A count of elements at least `min_element_bytes` each, checked
    /// against the bytes left before anything is allocated for it.
    pub fn checked_count(
        &self,
        count: u64,
        min_element_bytes: usize,
    ) -> Result<usize, SchemaError> {
        let count = usize::try_from(count).map_err(|_| SchemaError::Truncated)?;
        if count.saturating_mul(min_element_bytes) > self.bytes.len() {
            return Err(SchemaError::Truncated);
        }
        Ok(count)
    }

    /// The tagged fields of a flexible version: (tag, raw value) each.
    pub fn tagged_fields(&mut self) -> Result<Vec<(u32, &'a [u8])>, SchemaError> {
        let count = self.unsigned_varint()?;
        let count = self.checked_count(u64::from(count), 2)?;
        let mut fields = Vec::with_capacity(count);
        for _ in 0..count {
            let tag = self.unsigned_varint()?;
            let size = self.unsigned_varint()?;
            fields.push((tag, self.take(size as usize)?));
        }
        Ok(fields)
    }

    /// Nothing may follow the last field.
    pub fn finish(&self) -> Result<(), SchemaError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(SchemaError::TrailingBytes(self.bytes.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_checks_the_bytes_left() {
        let mut reader = SchemaReader::new(&[0, 3, b'a', b'b']);
        assert_eq!(reader.string(), Err(SchemaError::Truncated));
        let mut reader = SchemaReader::new(&[0xff, 0xff]);
        assert_eq!(reader.string(), Err(SchemaError::UnexpectedNull));
        let mut reader = SchemaReader::new(&[0xff, 0xfe]);
        assert_eq!(reader.string(), Err(SchemaError::NegativeLength(-2)));
        let mut reader = SchemaReader::new(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
        assert_eq!(reader.unsigned_varint(), Err(SchemaError::VarintTooLong));
        let reader = SchemaReader::new(&[1, 2]);
        assert_eq!(reader.checked_count(2, 2), Err(SchemaError::Truncated));
        assert_eq!(reader.finish(), Err(SchemaError::TrailingBytes(2)));
        let mut reader = SchemaReader::new(&[3, b'h', b'i']);
        assert_eq!(reader.compact_string().as_deref(), Ok("hi"));
        assert_eq!(reader.finish(), Ok(()));
    }
}
