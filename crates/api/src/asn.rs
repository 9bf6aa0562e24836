//! BGP AS numbers as Calico's manifests write them: a JSON number (`64512`), a
//! string (`"64512"`), or asdot notation (`"1.10"` = 1 × 65536 + 10). Whatever the
//! spelling, an AS number is stored and printed as the plain number (`65546`), as
//! Calico's `numorstring.ASNumber` marshals it and `calicoctl` shows it in tables,
//! YAML and JSON. How the input spelled it is remembered ([`ASNumber::form`]) but
//! equality, ordering and output use only the number.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The AS number a cluster uses when no BGPConfiguration sets one (Calico's default).
pub const DEFAULT_AS_NUMBER: u32 = 64512;

/// How an [`ASNumber`] was spelled in the input it was read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AsForm {
    /// A plain number: `64512`.
    #[default]
    Number,
    /// A decimal string: `"64512"`.
    String,
    /// Asdot notation: `"1.10"`.
    AsDot,
}

/// A 32-bit BGP AS number.
#[derive(Clone, Copy, Debug)]
pub struct ASNumber {
    value: u32,
    form: AsForm,
}

/// Why a string is not an AS number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AsnError {
    /// Neither a number nor asdot.
    #[error("{0:?} is not an AS number (expected 0..=4294967295 or asdot A.B)")]
    Syntax(String),
    /// A number above 32 bits.
    #[error("{0} is larger than the largest AS number, 4294967295")]
    TooLarge(String),
    /// An asdot half above 65535.
    #[error("{0:?}: each half of an asdot AS number must be 0..=65535")]
    AsDotRange(String),
}

impl ASNumber {
    /// An AS number written as a plain number.
    pub const fn new(value: u32) -> ASNumber {
        ASNumber {
            value,
            form: AsForm::Number,
        }
    }

    /// An AS number with an explicit spelling.
    pub const fn with_form(value: u32, form: AsForm) -> ASNumber {
        ASNumber { value, form }
    }

    /// The number.
    pub const fn get(self) -> u32 {
        self.value
    }

    /// How the input spelled it (output always uses the plain number).
    pub const fn form(self) -> AsForm {
        self.form
    }

    /// Asdot notation, `A.B`.
    pub fn to_asdot(self) -> String {
        format!("{}.{}", self.value >> 16, self.value & 0xffff)
    }
}

impl From<u32> for ASNumber {
    fn from(value: u32) -> ASNumber {
        ASNumber::new(value)
    }
}

impl PartialEq for ASNumber {
    fn eq(&self, other: &ASNumber) -> bool {
        self.value == other.value
    }
}

impl Eq for ASNumber {}

impl Hash for ASNumber {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.value.hash(state);
    }
}

impl PartialOrd for ASNumber {
    fn partial_cmp(&self, other: &ASNumber) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ASNumber {
    fn cmp(&self, other: &ASNumber) -> Ordering {
        self.value.cmp(&other.value)
    }
}

fn decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl FromStr for ASNumber {
    type Err = AsnError;

    /// Parses `64512` or asdot `1.10`; surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<ASNumber, AsnError> {
        let t = s.trim();
        if let Some((hi, lo)) = t.split_once('.') {
            if !decimal(hi) || !decimal(lo) {
                return Err(AsnError::Syntax(s.to_string()));
            }
            let (Ok(hi), Ok(lo)) = (hi.parse::<u16>(), lo.parse::<u16>()) else {
                return Err(AsnError::AsDotRange(s.to_string()));
            };
            return Ok(ASNumber::with_form(
                (u32::from(hi) << 16) | u32::from(lo),
                AsForm::AsDot,
            ));
        }
        if !decimal(t) {
            return Err(AsnError::Syntax(s.to_string()));
        }
        t.parse::<u32>()
            .map(|v| ASNumber::with_form(v, AsForm::String))
            .map_err(|_| AsnError::TooLarge(t.to_string()))
    }
}

impl fmt::Display for ASNumber {
    /// The plain number (asplain), whatever the spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.value)
    }
}

impl Serialize for ASNumber {
    /// Always the plain number, as Calico stores it: `"1.10"` is written `65546`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.value)
    }
}

impl<'de> Deserialize<'de> for ASNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ASNumber, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ASNumber;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an AS number: 0..=4294967295, or asdot \"A.B\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ASNumber, E> {
                u32::try_from(v)
                    .map(ASNumber::new)
                    .map_err(|_| E::custom(AsnError::TooLarge(v.to_string())))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ASNumber, E> {
                u32::try_from(v)
                    .map(ASNumber::new)
                    .map_err(|_| E::custom(format!("{v} is not an AS number (0..=4294967295)")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ASNumber, E> {
                Err(E::custom(format!(
                    "{v} is not an AS number; quote asdot numbers (\"1.10\") so they stay exact"
                )))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ASNumber, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_spelling() {
        assert_eq!("64512".parse::<ASNumber>().unwrap().get(), 64512);
        assert_eq!("1.10".parse::<ASNumber>().unwrap().get(), 65546);
        assert_eq!("0.0".parse::<ASNumber>().unwrap().get(), 0);
        assert_eq!("65535.65535".parse::<ASNumber>().unwrap().get(), u32::MAX);
        assert_eq!(" 4294967295 ".parse::<ASNumber>().unwrap().get(), u32::MAX);
        for bad in ["", "banana", "-1", "1.", ".1", "1.2.3", "+5", "1e3"] {
            assert!(bad.parse::<ASNumber>().is_err(), "{bad:?}");
        }
        assert!(matches!(
            "4294967296".parse::<ASNumber>(),
            Err(AsnError::TooLarge(_))
        ));
        assert!(matches!(
            "65536.1".parse::<ASNumber>(),
            Err(AsnError::AsDotRange(_))
        ));
    }

    #[test]
    fn serialises_as_the_plain_number() {
        for (input, output, form) in [
            (json!(64512), json!(64512), AsForm::Number),
            (json!("64512"), json!(64512), AsForm::String),
            (json!("1.10"), json!(65546), AsForm::AsDot),
            (json!("65535.65535"), json!(4294967295u32), AsForm::AsDot),
        ] {
            let asn: ASNumber = serde_json::from_value(input).unwrap();
            assert_eq!(asn.form(), form);
            assert_eq!(serde_json::to_value(asn).unwrap(), output);
        }
        let a: ASNumber = serde_json::from_value(json!("1.10")).unwrap();
        let b: ASNumber = serde_json::from_value(json!(65546)).unwrap();
        assert_eq!(a, b, "equality is by value");
        assert_eq!(a.to_string(), "65546");
        assert_eq!(a.to_asdot(), "1.10");
    }

    #[test]
    fn rejects_what_is_not_an_as_number() {
        for bad in [
            json!(-1),
            json!(4294967296u64),
            json!(1.5),
            json!("x"),
            json!(true),
        ] {
            assert!(
                serde_json::from_value::<ASNumber>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
