//! The ids, checked once where they enter and passed on as their types.

/// `[a-z0-9_-]{1,64}`: also the hash tag of every Redis key of the sale, so it
/// must never contain braces.
pub fn valid_sale_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// An id checked once, where it enters (an extractor, a token), and passed
/// on as its type: code that takes one never checks it again.
macro_rules! checked_id {
    ($(#[$doc:meta])* $name:ident, $valid:expr, $pattern:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The id, if it is one.
            pub fn parse(text: impl Into<String>) -> Option<$name> {
                $name::try_from(text.into()).ok()
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// The id, or the text back if it is not one (for text read from a
        /// store, where a bad id is corruption to report with its text).
        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(text: String) -> Result<$name, String> {
                let valid: fn(&str) -> bool = $valid;
                if valid(&text) {
                    Ok($name(text))
                } else {
                    Err(text)
                }
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        /// In JSON: the plain string, so documents written before the type
        /// existed read the same.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        /// Text that breaks the rule is refused here, as at any other entry.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let text = String::deserialize(deserializer)?;
                $name::try_from(text).map_err(|text| {
                    serde::de::Error::custom(format!(
                        "`{text}` is not a {}: it must match {}",
                        stringify!($name),
                        $pattern
                    ))
                })
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        /// In the API document: a string of the same rule.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some($pattern))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

checked_id!(
    /// A sale id: `[a-z0-9_-]{1,64}`, also the hash tag of the sale's keys.
    SaleId,
    valid_sale_id,
    "^[a-z0-9_-]{1,64}$"
);
checked_id!(
    /// A reservation id: `<sale id>.<32 hex>`, so it names its sale.
    ReservationId,
    |id| sale_of_reservation(id).is_some(),
    "^[a-z0-9_-]{1,64}\\.[0-9a-fA-F]{32}$"
);
checked_id!(
    /// A customer id (a token's subject): 1 to 64 printable ASCII characters.
    CustomerId,
    valid_customer_id,
    "^[!-~]{1,64}$"
);

impl ReservationId {
    /// The sale the reservation belongs to.
    pub fn sale(&self) -> &str {
        // Checked at parse: the part before the last dot is a sale id.
        self.0.rsplit_once('.').map_or("", |(sale, _)| sale)
    }

    /// The sale the reservation belongs to, as its id.
    pub fn sale_id(&self) -> SaleId {
        SaleId(self.sale().to_string())
    }
}

/// A customer id (JWT `sub`): 1 to 64 printable ASCII characters.
pub fn valid_customer_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Reservation ids carry their sale: `<sale_id>.<32 hex>`. The sale id is the
/// hash tag of every key, so a reservation is found in one step with no
/// global index, which also holds on Redis Cluster.
pub fn new_reservation_id(sale_id: &str) -> String {
    format!("{sale_id}.{}", uuid::Uuid::new_v4().simple())
}

/// The sale a reservation id belongs to, if the id is well formed.
pub fn sale_of_reservation(id: &str) -> Option<&str> {
    let (sale, rest) = id.rsplit_once('.')?;
    (valid_sale_id(sale) && rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(sale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_ids_name_their_sale() {
        let id = new_reservation_id("tv-1212");
        assert_eq!(sale_of_reservation(&id), Some("tv-1212"));
        assert_eq!(sale_of_reservation("tv-1212.xyz"), None);
        assert_eq!(
            sale_of_reservation("TV.0123456789abcdef0123456789abcdef"),
            None
        );
        assert_eq!(sale_of_reservation("no-dot"), None);
    }

    #[test]
    fn sale_ids_cannot_break_the_hash_tag() {
        assert!(valid_sale_id("tv-1212_b"));
        assert!(!valid_sale_id("a{b}"));
        assert!(!valid_sale_id(""));
        assert!(!valid_sale_id(&"a".repeat(65)));
    }

    #[test]
    fn ids_are_plain_strings_in_json_and_refuse_bad_text() {
        let id = SaleId::parse("tv-1212").expect("a sale id");
        assert_eq!(
            serde_json::to_string(&id).ok().as_deref(),
            Some("\"tv-1212\"")
        );
        assert_eq!(serde_json::from_str::<SaleId>("\"tv-1212\"").ok(), Some(id));
        assert!(serde_json::from_str::<SaleId>("\"a{b}\"").is_err());
        assert!(serde_json::from_str::<ReservationId>("\"tv-1212.xyz\"").is_err());
    }
}
