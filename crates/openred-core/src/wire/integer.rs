//! Integer fields that accept every JSON number the schema calls an
//! integer. JSON Schema (and so OpenAPI 3.1) counts `28106.0` as an
//! integer; serde's `u64` refuses it, so a client that writes numbers as
//! floats (JavaScript, many generators) was refused with 422 although the
//! document allowed the value. A float is accepted when it is finite,
//! whole and in range; anything else is still an error.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

struct WholeNumber;

impl Visitor<'_> for WholeNumber {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number from 0 to 2^64 - 1")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        // 2^64 is exactly representable; every whole float below it fits.
        if v.is_finite() && v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
            Ok(v as u64)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
}

/// `#[serde(deserialize_with = "…::u64")]`.
pub fn u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    deserializer.deserialize_any(WholeNumber)
}

/// `#[serde(default, deserialize_with = "…::option_u64")]`: `null` is
/// `None`.
pub fn option_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct Optional;
    impl<'de> Visitor<'de> for Optional {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("null or a whole number from 0 to 2^64 - 1")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
            u64(d).map(Some)
        }
    }
    deserializer.deserialize_option(Optional)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::u64")]
        n: u64,
        #[serde(default, deserialize_with = "super::option_u64")]
        m: Option<u64>,
    }

    fn parse(json: &str) -> Option<(u64, Option<u64>)> {
        serde_json::from_str::<T>(json).ok().map(|t| (t.n, t.m))
    }

    #[test]
    fn whole_floats_are_integers_and_nothing_else_is() {
        assert_eq!(parse(r#"{"n":5}"#), Some((5, None)));
        assert_eq!(parse(r#"{"n":28106.0,"m":1e3}"#), Some((28106, Some(1000))));
        assert_eq!(
            parse(r#"{"n":18446744073709551615,"m":null}"#),
            Some((u64::MAX, None))
        );
        for bad in [
            r#"{"n":1.5}"#,
            r#"{"n":-1}"#,
            r#"{"n":-1.0}"#,
            r#"{"n":1.8446744073709552e19}"#,
            r#"{"n":"1"}"#,
            r#"{"n":null}"#,
            r#"{"n":1,"m":0.5}"#,
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
