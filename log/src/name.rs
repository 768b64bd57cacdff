//! Topic name rules, the same as Kafka's.

use crate::error::{LogError, Result};

/// Longest topic name Kafka accepts.
pub const MAX_NAME_LEN: usize = 249;

/// Checks a topic name against Kafka's rules: 1–249 characters from `[a-zA-Z0-9._-]`, not `.` or `..`.
///
/// ```
/// assert!(garam_log::validate_topic_name("clicks.v2_raw-1").is_ok());
/// assert!(garam_log::validate_topic_name("..").is_err());
/// assert!(garam_log::validate_topic_name("a/b").is_err());
/// ```
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason| Err(LogError::InvalidTopicName { name: name.to_string(), reason });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 249 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_rules() {
        for ok in ["a", "clicks", "A.b_c-9", &"x".repeat(249)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", &"x".repeat(250), "a:b"] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }
}
