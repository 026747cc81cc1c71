//! The events stream's entries (`SaleKeys::events`), as `lua/prelude.lua`
//! writes them (`hold_event`, `sold_out`), read back into events for the
//! store. Read through the same consumer group as the orders' outbox
//! (`super::outbox`), by the same flush.

use super::hold::Record;
use super::outbox::Entry;
use crate::domain::event::{self, Event};
use crate::domain::{from_ms, Stock};

impl Entry {
    /// The event the entry carries; `Err` for an entry that is not what the
    /// scripts write (poison), `None` for a deleted one.
    pub fn event(&self, sale_id: &str) -> Option<Result<Event, String>> {
        self.fields.as_ref()?;
        Some(self.parse_event(sale_id))
    }

    fn parse_event(&self, sale_id: &str) -> Result<Event, String> {
        let get = |name: &str| {
            self.field(name)
                .ok_or_else(|| format!("missing field `{name}`"))
        };
        let num = |name: &str| -> Result<i64, String> {
            get(name)?
                .parse::<i64>()
                .map_err(|_| format!("field `{name}` is not an integer"))
        };
        let id = get("id")?.to_string();
        let kind = get("type")?;
        let at = from_ms(num("ms")?);
        let version = Some(num("version")?);
        match kind {
            event::EXPIRED | event::RELEASED => {
                let rid = get("rid")?;
                let rec: Record = serde_json::from_str(get("rec")?)
                    .map_err(|e| format!("field `rec` is not a reservation record: {e}"))?;
                let reservation = rec.reservation(rid, sale_id);
                Ok(Event::reservation(
                    id,
                    kind,
                    at,
                    version,
                    &reservation,
                    None,
                ))
            }
            event::SOLD_OUT => {
                let stock = Stock {
                    total: num("total")?,
                    available: num("available")?,
                    held: num("held")?,
                    sold: num("sold")?,
                };
                Ok(Event::sold_out(id, at, sale_id, version, stock))
            }
            other => Err(format!("unknown event type `{other}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pairs: &[(&str, &str)]) -> Entry {
        Entry {
            id: "1-0".into(),
            fields: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn parses_what_the_scripts_write_and_refuses_the_rest() {
        let rec = r#"{"c":"alice","q":2,"s":"expired","e":1765497660000,"t":1765497600000,"pc":100,"cu":"IDR"}"#;
        let expired = entry(&[
            ("id", "tv.0123.reservation.expired"),
            ("type", "reservation.expired"),
            ("ms", "1765497660001"),
            ("version", "7"),
            ("rid", "tv.0123"),
            ("rec", rec),
        ]);
        let e = expired.event("tv").unwrap().unwrap();
        assert_eq!(e.id, "tv.0123.reservation.expired");
        assert_eq!(e.aggregateid, "tv.0123");
        assert_eq!(e.payload["data"]["version"], 7);
        assert_eq!(e.payload["data"]["reservation"]["status"], "expired");
        assert!(e.payload["data"].get("order").is_none());

        let sold_out = entry(&[
            ("id", "tv.sale.sold_out.1"),
            ("type", "sale.sold_out"),
            ("ms", "1765497660001"),
            ("version", "8"),
            ("total", "10"),
            ("available", "0"),
            ("held", "4"),
            ("sold", "6"),
        ]);
        let e = sold_out.event("tv").unwrap().unwrap();
        assert_eq!((e.aggregatetype, e.aggregateid.as_str()), ("sale", "tv"));
        assert_eq!(e.payload["data"]["sale"]["held"], 4);

        let bad = entry(&[
            ("id", "x"),
            ("type", "order"),
            ("ms", "1"),
            ("version", "1"),
        ]);
        assert!(bad.event("tv").unwrap().unwrap_err().contains("unknown"));
        assert!(entry(&[("id", "x")]).event("tv").unwrap().is_err());
        let gone = Entry {
            id: "1-0".into(),
            fields: None,
        };
        assert!(gone.event("tv").is_none());
    }
}
