//! [`Change`]: how a table's updates travel — a key's value before and after.

use garam_core::serdes::{Serde, SerdeError, SharedSerde};

/// An update to a table row: the value before (`old`) and after (`new`); `None` is absent, so a
/// `new` of `None` deletes the row. Carrying the old value lets a re-grouped table subtract it
/// from the group it leaves, and lets a filter retract a row that stops matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<V> {
    /// The value before.
    pub old: Option<V>,
    /// The value after.
    pub new: Option<V>,
}

/// A changes's bytes (repartition topics): a flags byte (bit 0: old present, bit 1: new present),
/// the old value's length as a u32 (big-endian) and bytes, then the new value's bytes.
pub struct ChangeSerde<V>(pub SharedSerde<V>);

impl<V: 'static> Serde<Change<V>> for ChangeSerde<V> {
    fn name(&self) -> &'static str {
        "change"
    }

    fn serialize(&self, value: &Change<V>, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        let flags = u8::from(value.old.is_some()) | (u8::from(value.new.is_some()) << 1);
        out.push(flags);
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        if let Some(old) = &value.old {
            self.0.serialize(old, out)?;
        }
        let len = u32::try_from(out.len() - len_at - 4).map_err(|_| SerdeError::Invalid {
            serde: "change",
            reason: "the old value is longer than 4 GiB".into(),
        })?;
        out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        if let Some(new) = &value.new {
            self.0.serialize(new, out)?;
        }
        Ok(())
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<Change<V>, SerdeError> {
        let short = || SerdeError::Invalid { serde: "change", reason: format!("{} bytes is too short", bytes.len()) };
        let (&flags, rest) = bytes.split_first().ok_or_else(short)?;
        if flags > 3 {
            return Err(SerdeError::Invalid { serde: "change", reason: format!("unknown flags {flags}") });
        }
        let len = rest.get(..4).ok_or_else(short)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let old_bytes = rest.get(4..4 + len).ok_or_else(short)?;
        let new_bytes = &rest[4 + len..];
        let old = if flags & 1 != 0 { Some(self.0.deserialize(old_bytes)?) } else { None };
        let new = if flags & 2 != 0 { Some(self.0.deserialize(new_bytes)?) } else { None };
        Ok(Change { old, new })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use garam_core::serdes::StringSerde;

    use super::*;

    #[test]
    fn changes_round_trip_and_bad_bytes_are_errors() {
        let serde = ChangeSerde::<String>(Arc::new(StringSerde));
        for c in [
            Change { old: None, new: Some("a".to_string()) },
            Change { old: Some("bb".to_string()), new: None },
            Change { old: Some(String::new()), new: Some("c".to_string()) },
        ] {
            let mut out = Vec::new();
            serde.serialize(&c, &mut out).unwrap();
            assert_eq!(serde.deserialize(&out).unwrap(), c);
        }
        assert!(serde.deserialize(&[]).is_err());
        assert!(serde.deserialize(&[1, 0, 0, 0, 9, b'x']).is_err());
        assert!(serde.deserialize(&[7, 0, 0, 0, 0]).is_err());
    }
}
