//! The rules of client input shared by the nouns' bodies: plain text and
//! serde helpers that read JSON the way the API document writes it.

use serde::Deserialize;
use time::OffsetDateTime;

/// Text a person typed, with no control characters (Postgres refuses NUL in
/// TEXT, and no name, SKU or payment reference needs the others) and no
/// invisible format characters (Unicode category Cf: bidirectional controls
/// such as U+202E reorder what a reader sees, zero-width ones make two
/// different strings look alike). Zero-width non-joiner and joiner stay:
/// Persian and other scripts, and emoji sequences, need them. The API
/// document's patterns for these fields spell out the same classes (from
/// unicode-properties' table), so generated clients and fuzzers agree.
pub fn plain_text(s: &str) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    !s.chars().any(|c| {
        c.is_control()
            || (c.general_category() == GeneralCategory::Format
                && c != '\u{200C}'
                && c != '\u{200D}')
    })
}

/// An optional field that, when given, holds a value: `null` is refused
/// rather than read as "absent", so a body means what its keys say.
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A whole number, also when written `40.0`: JSON (and the API document's
/// `integer`) make no difference between the two, so neither may we.
pub fn whole<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    struct Whole<T>(std::marker::PhantomData<T>);
    impl<T: TryFrom<i64> + TryFrom<u64>> serde::de::Visitor<'_> for Whole<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number in range")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
            // 2^63: every whole f64 below it converts to i64 exactly.
            if v.fract() == 0.0 && v.abs() < 9.223_372_036_854_776e18 {
                self.visit_i64(v as i64)
            } else {
                Err(E::custom(format!("{v} is not a whole number in range")))
            }
        }
    }
    d.deserialize_any(Whole(std::marker::PhantomData))
}

/// [`present`] for a [`whole`] number.
pub fn present_whole<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    whole(d).map(Some)
}

/// [`present`] for an RFC 3339 time.
pub fn present_rfc3339<'de, D>(d: D) -> Result<Option<OffsetDateTime>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    time::serde::rfc3339::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::plain_text;

    #[test]
    fn plain_text_refuses_format_characters_but_joiners() {
        for bad in [
            "a\u{202E}b",
            "\u{200B}",
            "x\u{2060}",
            "\u{FEFF}tv",
            "\u{00AD}",
            "nul\0",
        ] {
            assert!(!plain_text(bad), "{bad:?}");
        }
        for good in ["می\u{200C}خواهم", "👩\u{200D}💻", "55\" OLED TV", "Ünïcödé"] {
            assert!(plain_text(good), "{good:?}");
        }
    }
}
