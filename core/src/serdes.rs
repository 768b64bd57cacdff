//! Serdes: how keys and values become bytes and back.
//!
//! A [`Serde`] writes into a caller's reusable buffer, so serialising a record allocates nothing
//! in the plumbing. Kafka's null (a missing key, a tombstone value) is a value of the type only for
//! serdes that say so: [`OptionSerde`] maps it to `None`, [`UnitSerde`] to `()`; for the others a
//! null is a deserialization error, handled by the application's policy.
//!
//! ```
//! use garam_core::serdes::{JsonSerde, Serde, StringSerde};
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct Click { page: String }
//! let json = JsonSerde::<Click>::new();
//! let mut buf = Vec::new();
//! json.serialize(&Click { page: "home".into() }, &mut buf).unwrap();
//! assert_eq!(buf, br#"{"page":"home"}"#);
//! assert_eq!(json.deserialize(&buf).unwrap(), Click { page: "home".into() });
//! assert!(StringSerde.deserialize(&[0xff]).is_err());
//! ```

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;

/// Why bytes did not become a value (or a value bytes).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SerdeError {
    /// The bytes are not what the serde expects.
    #[error("{serde}: {reason}")]
    Invalid {
        /// The serde's name.
        serde: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A null key or value where the type has no null.
    #[error("{0}: null where a value was expected")]
    Null(&'static str),
}

/// Turns values of `T` into bytes and back. Implement it for your own formats.
pub trait Serde<T>: Send + Sync + 'static {
    /// A short name for errors and `describe()`.
    fn name(&self) -> &'static str;
    /// Appends the bytes of `value` to `out`.
    fn serialize(&self, value: &T, out: &mut Vec<u8>) -> Result<(), SerdeError>;
    /// Reads a value.
    fn deserialize(&self, bytes: &[u8]) -> Result<T, SerdeError>;
    /// True when `value` is written as Kafka's null (no bytes at all).
    fn is_null(&self, _value: &T) -> bool {
        false
    }
    /// The value a null reads as; an error unless the type has a null.
    fn deserialize_null(&self) -> Result<T, SerdeError> {
        Err(SerdeError::Null(self.name()))
    }
}

/// A shared serde, as operators hold them.
pub type SharedSerde<T> = Arc<dyn Serde<T>>;

/// Reads an optional byte slice with a serde (null handling included).
pub fn deserialize_opt<T: 'static>(serde: &dyn Serde<T>, bytes: Option<&[u8]>) -> Result<T, SerdeError> {
    match bytes {
        Some(b) => serde.deserialize(b),
        None => serde.deserialize_null(),
    }
}

/// JSON through serde_json.
pub struct JsonSerde<T>(PhantomData<fn() -> T>);

impl<T> JsonSerde<T> {
    /// A JSON serde for `T`.
    pub fn new() -> Self {
        JsonSerde(PhantomData)
    }
}

impl<T> Default for JsonSerde<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: serde::Serialize + serde::de::DeserializeOwned + 'static> Serde<T> for JsonSerde<T> {
    fn name(&self) -> &'static str {
        "json"
    }
    fn serialize(&self, value: &T, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        serde_json::to_writer(out, value).map_err(|e| SerdeError::Invalid { serde: "json", reason: e.to_string() })
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<T, SerdeError> {
        serde_json::from_slice(bytes).map_err(|e| SerdeError::Invalid { serde: "json", reason: e.to_string() })
    }
}

/// Compact binary through bincode (standard config).
pub struct BincodeSerde<T>(PhantomData<fn() -> T>);

impl<T> BincodeSerde<T> {
    /// A bincode serde for `T`.
    pub fn new() -> Self {
        BincodeSerde(PhantomData)
    }
}

impl<T> Default for BincodeSerde<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: serde::Serialize + serde::de::DeserializeOwned + 'static> Serde<T> for BincodeSerde<T> {
    fn name(&self) -> &'static str {
        "bincode"
    }
    fn serialize(&self, value: &T, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
            .map(|_| ())
            .map_err(|e| SerdeError::Invalid { serde: "bincode", reason: e.to_string() })
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<T, SerdeError> {
        let (v, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| SerdeError::Invalid { serde: "bincode", reason: e.to_string() })?;
        if used != bytes.len() {
            return Err(SerdeError::Invalid {
                serde: "bincode",
                reason: format!("{} trailing bytes", bytes.len() - used),
            });
        }
        Ok(v)
    }
}

/// UTF-8 strings.
#[derive(Debug, Clone, Copy, Default)]
pub struct StringSerde;

impl Serde<String> for StringSerde {
    fn name(&self) -> &'static str {
        "string"
    }
    fn serialize(&self, value: &String, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        out.extend_from_slice(value.as_bytes());
        Ok(())
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<String, SerdeError> {
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|e| SerdeError::Invalid { serde: "string", reason: format!("not UTF-8: {e}") })
    }
}

/// Raw bytes, untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesSerde;

impl Serde<Bytes> for BytesSerde {
    fn name(&self) -> &'static str {
        "bytes"
    }
    fn serialize(&self, value: &Bytes, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        out.extend_from_slice(value);
        Ok(())
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<Bytes, SerdeError> {
        Ok(Bytes::copy_from_slice(bytes))
    }
}

impl Serde<Vec<u8>> for BytesSerde {
    fn name(&self) -> &'static str {
        "bytes"
    }
    fn serialize(&self, value: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        out.extend_from_slice(value);
        Ok(())
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<Vec<u8>, SerdeError> {
        Ok(bytes.to_vec())
    }
}

macro_rules! int_serde {
    ($name:ident, $t:ty, $label:literal) => {
        #[doc = concat!("`", stringify!($t), "` as big-endian bytes, like Kafka's integer serdes.")]
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl Serde<$t> for $name {
            fn name(&self) -> &'static str {
                $label
            }
            fn serialize(&self, value: &$t, out: &mut Vec<u8>) -> Result<(), SerdeError> {
                out.extend_from_slice(&value.to_be_bytes());
                Ok(())
            }
            fn deserialize(&self, bytes: &[u8]) -> Result<$t, SerdeError> {
                let arr = bytes.try_into().map_err(|_| SerdeError::Invalid {
                    serde: $label,
                    reason: format!("expected {} bytes, got {}", std::mem::size_of::<$t>(), bytes.len()),
                })?;
                Ok(<$t>::from_be_bytes(arr))
            }
        }
    };
}

int_serde!(I32Serde, i32, "i32");
int_serde!(I64Serde, i64, "i64");
int_serde!(U32Serde, u32, "u32");
int_serde!(U64Serde, u64, "u64");

/// `()` for keyless streams: writes null, reads anything (including null) as `()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitSerde;

impl Serde<()> for UnitSerde {
    fn name(&self) -> &'static str {
        "unit"
    }
    fn serialize(&self, _: &(), _: &mut Vec<u8>) -> Result<(), SerdeError> {
        Ok(())
    }
    fn deserialize(&self, _: &[u8]) -> Result<(), SerdeError> {
        Ok(())
    }
    fn is_null(&self, _: &()) -> bool {
        true
    }
    fn deserialize_null(&self) -> Result<(), SerdeError> {
        Ok(())
    }
}

/// `Option<T>` with Kafka's null as `None` (tombstones, missing keys).
pub struct OptionSerde<S>(pub S);

impl<T, S: Serde<T>> Serde<Option<T>> for OptionSerde<S> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn serialize(&self, value: &Option<T>, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        match value {
            Some(v) => self.0.serialize(v, out),
            None => Ok(()),
        }
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<Option<T>, SerdeError> {
        self.0.deserialize(bytes).map(Some)
    }
    fn is_null(&self, value: &Option<T>) -> bool {
        value.is_none()
    }
    fn deserialize_null(&self) -> Result<Option<T>, SerdeError> {
        Ok(None)
    }
}

/// Types with an obvious serde, so `Consumed::default()` can pick it.
pub trait DefaultSerde: Sized + 'static {
    /// The serde for this type.
    fn default_serde() -> SharedSerde<Self>;
}

macro_rules! default_serde {
    ($t:ty, $s:expr) => {
        impl DefaultSerde for $t {
            fn default_serde() -> SharedSerde<Self> {
                Arc::new($s)
            }
        }
    };
}

default_serde!(String, StringSerde);
default_serde!(Bytes, BytesSerde);
default_serde!(Vec<u8>, BytesSerde);
default_serde!(i32, I32Serde);
default_serde!(i64, I64Serde);
default_serde!(u32, U32Serde);
default_serde!(u64, U64Serde);
default_serde!((), UnitSerde);

impl<T: DefaultSerde> DefaultSerde for Option<T> {
    fn default_serde() -> SharedSerde<Self> {
        Arc::new(OptionSerde(ArcSerde(T::default_serde())))
    }
}

/// Adapts a shared serde to the `Serde` trait by value.
pub struct ArcSerde<T>(pub SharedSerde<T>);

impl<T: 'static> Serde<T> for ArcSerde<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn serialize(&self, value: &T, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        self.0.serialize(value, out)
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<T, SerdeError> {
        self.0.deserialize(bytes)
    }
    fn is_null(&self, value: &T) -> bool {
        self.0.is_null(value)
    }
    fn deserialize_null(&self) -> Result<T, SerdeError> {
        self.0.deserialize_null()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: PartialEq + std::fmt::Debug + 'static>(s: &dyn Serde<T>, v: T) {
        let mut b = Vec::new();
        s.serialize(&v, &mut b).unwrap();
        assert_eq!(s.deserialize(&b).unwrap(), v);
    }

    #[test]
    fn every_serde_roundtrips() {
        roundtrip(&StringSerde, "héllo".to_string());
        roundtrip(&I32Serde, -7);
        roundtrip(&I64Serde, i64::MIN);
        roundtrip(&U64Serde, 42);
        roundtrip(&BincodeSerde::<(String, u32)>::new(), ("a".into(), 9));
        roundtrip(&JsonSerde::<Vec<u32>>::new(), vec![1, 2]);
        roundtrip(&BytesSerde, Bytes::from_static(b"\0\x01"));
    }

    #[test]
    fn integers_are_big_endian_like_kafka() {
        let mut b = Vec::new();
        I32Serde.serialize(&1, &mut b).unwrap();
        assert_eq!(b, [0, 0, 0, 1]);
        assert!(I32Serde.deserialize(&[1, 2]).is_err());
    }

    #[test]
    fn nulls() {
        assert_eq!(deserialize_opt(&StringSerde, None), Err(SerdeError::Null("string")));
        assert_eq!(deserialize_opt(&OptionSerde(StringSerde), None), Ok(None));
        assert_eq!(deserialize_opt(&UnitSerde, None), Ok(()));
        assert!(OptionSerde(StringSerde).is_null(&None));
        assert!(JsonSerde::<u32>::new().deserialize(b"{").is_err());
    }
}
