//! `kafki consume --format`: kcat's `-f` output format, pure. A format is parsed once into
//! pieces and then written per record, raw bytes in, raw bytes out (keys and values are
//! written as they are, not as lossy UTF-8).
//!
//! Placeholders (kcat's): `%t` topic, `%p` partition, `%o` offset, `%k` key, `%K` key
//! length, `%s` value, `%S` value length, `%T` timestamp (ms since the epoch), `%h` headers
//! (`k=v,k2=v2`), `%%` a percent sign. Escapes: `\n`, `\t`, `\r`, `\\`. A null key or
//! value prints as nothing and its length as -1.

use std::io::Write;

use kafki_storage::records::Record;

/// The default: each value on its own line (Kafka's console consumer).
pub const DEFAULT_FORMAT: &str = "%s\\n";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    KeyLength,
    Value,
    ValueLength,
    Timestamp,
    Headers,
}

/// A parsed `--format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFormat {
    pieces: Vec<Piece>,
}

/// One record with where it came from.
pub struct PlacedRecord<'a, 'r> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub record: &'a Record<'r>,
}

impl RecordFormat {
    pub fn parse(format: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = Vec::new();
        let mut characters = format.chars();
        while let Some(character) = characters.next() {
            let placeholder = match character {
                '%' => match characters.next() {
                    Some('%') => {
                        literal.push(b'%');
                        continue;
                    }
                    Some('t') => Piece::Topic,
                    Some('p') => Piece::Partition,
                    Some('o') => Piece::Offset,
                    Some('k') => Piece::Key,
                    Some('K') => Piece::KeyLength,
                    Some('s') => Piece::Value,
                    Some('S') => Piece::ValueLength,
                    Some('T') => Piece::Timestamp,
                    Some('h') => Piece::Headers,
                    Some(other) => return Err(format!("unknown placeholder %{other} in --format")),
                    None => return Err("--format ends with a lone %".into()),
                },
                '\\' => {
                    let escaped = match characters.next() {
                        Some('n') => b'\n',
                        Some('t') => b'\t',
                        Some('r') => b'\r',
                        Some('\\') => b'\\',
                        Some(other) => return Err(format!("unknown escape \\{other} in --format")),
                        None => return Err("--format ends with a lone \\".into()),
                    };
                    literal.push(escaped);
                    continue;
                }
                other => {
                    let mut buffer = [0u8; 4];
                    literal.extend_from_slice(other.encode_utf8(&mut buffer).as_bytes());
                    continue;
                }
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(placeholder);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Self { pieces })
    }

    /// Appends `placed` in this format to `output`.
    pub fn write(&self, output: &mut Vec<u8>, placed: &PlacedRecord<'_, '_>) {
        let record = placed.record;
        let length = |bytes: Option<&[u8]>| bytes.map_or(-1, |bytes| bytes.len() as i64);
        for piece in &self.pieces {
            // Writing into a Vec cannot fail.
            let _ = match piece {
                Piece::Literal(bytes) => output.write_all(bytes),
                Piece::Topic => output.write_all(placed.topic.as_bytes()),
                Piece::Partition => write!(output, "{}", placed.partition),
                Piece::Offset => write!(output, "{}", placed.offset),
                Piece::Key => output.write_all(record.key.unwrap_or_default()),
                Piece::KeyLength => write!(output, "{}", length(record.key)),
                Piece::Value => output.write_all(record.value.unwrap_or_default()),
                Piece::ValueLength => write!(output, "{}", length(record.value)),
                Piece::Timestamp => write!(output, "{}", placed.timestamp_ms),
                Piece::Headers => {
                    for (index, (key, value)) in record.headers().enumerate() {
                        if index > 0 {
                            output.push(b',');
                        }
                        output.extend_from_slice(key);
                        output.push(b'=');
                        output.extend_from_slice(value.unwrap_or_default());
                    }
                    Ok(())
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_storage::records::{encode_record, records, NewRecord};

    fn render(format: &str, new: &NewRecord<'_>) -> String {
        let mut section = Vec::new();
        encode_record(&mut section, new);
        let record = records(&section, 1)
            .next()
            .expect("one record")
            .expect("decodes");
        let placed = PlacedRecord {
            topic: "orders",
            partition: 2,
            offset: 41,
            timestamp_ms: 1_700_000_000_000,
            record: &record,
        };
        let mut output = Vec::new();
        RecordFormat::parse(format)
            .expect("valid format")
            .write(&mut output, &placed);
        String::from_utf8(output).expect("utf-8")
    }

    #[test]
    fn placeholders_and_escapes_follow_kcat() {
        let headers: &[(&[u8], Option<&[u8]>)] = &[(b"trace", Some(b"abc")), (b"empty", None)];
        let record = NewRecord {
            key: Some(b"user-1"),
            value: Some(b"hello"),
            headers,
            ..NewRecord::default()
        };
        assert_eq!(
            render("%t/%p@%o %k=%s (%K/%S) %T [%h] 100%%\\t|\\n", &record),
            "orders/2@41 user-1=hello (6/5) 1700000000000 [trace=abc,empty=] 100%\t|\n"
        );
        assert_eq!(render(DEFAULT_FORMAT, &record), "hello\n");
    }

    #[test]
    fn nulls_print_empty_with_length_minus_one() {
        let record = NewRecord {
            key: None,
            value: None,
            ..NewRecord::default()
        };
        assert_eq!(render("[%k][%s] %K %S", &record), "[][] -1 -1");
    }

    #[test]
    fn bad_formats_are_refused() {
        for bad in ["%x", "abc%", "\\q", "\\"] {
            assert!(RecordFormat::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            RecordFormat::parse("é%s"),
            Ok(RecordFormat {
                pieces: vec![Piece::Literal("é".as_bytes().to_vec()), Piece::Value]
            })
        );
    }
}
