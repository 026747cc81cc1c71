//! Set up: every gateway ready, a sale of its own created on the first.

use std::time::{Duration, Instant};

use rand::Rng;
use serde::Deserialize;
use serde_json::json;

use flashsale::auth::Auth;
use flashsale::config::Settings;
use flashsale::domain::rfc3339_ms;

use super::{Options, Out, Play, Stock};

impl<'a> Play<'a> {
    pub(super) async fn set_up(settings: &'a Settings, o: &'a Options) -> anyhow::Result<Play<'a>> {
        o.validate()?;
        let out = Out { json: o.json };
        let Some(secret) = settings.auth.hs256_secret() else {
            anyhow::bail!("the load test signs HS256 tokens: set auth.jwt_secret");
        };
        let auth = Auth::new(&secret);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(o.concurrency)
            .build()?;
        let bases: Vec<String> = o
            .url
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        anyhow::ensure!(!bases.is_empty(), "--url names no gateway");
        for base in &bases {
            wait_ready(&http, base).await?;
        }
        let now = time::OffsetDateTime::now_utc();
        // Two runs in the same second (a bench) must not share a sale.
        let sale_id = format!(
            "demo-{}-{:04x}",
            now.unix_timestamp(),
            rand::thread_rng().gen::<u16>()
        );
        let play = Play {
            settings,
            o,
            out,
            auth,
            http,
            bases,
            sale_id,
        };
        play.create_sale(now).await?;
        play.out.say(format!(
            "sale {}: {} units, limit {} per buyer, holds last {} s",
            play.sale_id, o.stock, o.limit, o.hold_seconds
        ));
        Ok(play)
    }

    /// The gateway the sale is created and its stock read through.
    pub(super) fn base(&self) -> &str {
        &self.bases[0]
    }

    /// The sale, open since a moment before `now` and for an hour.
    async fn create_sale(&self, now: time::OffsetDateTime) -> anyhow::Result<()> {
        let o = self.o;
        let admin = self.auth.issue("loadtest-admin", Some("admin"), 3600)?;
        let res = self
            .http
            .post(format!("{}/v1/sales", self.base()))
            .bearer_auth(&admin)
            .json(&json!({
                "id": self.sale_id, "sku": "TV-55-OLED", "name": "55\" OLED TV (12.12 demo)",
                "price_cents": 499_900, "currency": "IDR", "stock": o.stock,
                "starts_at": rfc3339_ms(now - Duration::from_secs(5)),
                "ends_at": rfc3339_ms(now + Duration::from_secs(3600)),
                "per_customer_limit": o.limit, "hold_seconds": o.hold_seconds,
            }))
            .send()
            .await?;
        anyhow::ensure!(
            res.status().is_success(),
            "creating the sale: {} {}",
            res.status(),
            res.text().await?
        );
        Ok(())
    }

    /// The sale's figures now.
    pub(super) async fn stock(&self) -> anyhow::Result<Stock> {
        get_stock(&self.http, self.base(), &self.sale_id).await
    }
}

/// Only the figures: a baseline's sale need not carry every field.
#[derive(Deserialize)]
struct SaleFigures {
    stock: Stock,
}

pub(super) async fn get_stock(
    http: &reqwest::Client,
    base: &str,
    id: &str,
) -> anyhow::Result<Stock> {
    let res = http.get(format!("{base}/v1/sales/{id}")).send().await?;
    anyhow::ensure!(
        res.status().is_success(),
        "reading the sale: {}",
        res.status()
    );
    Ok(res.json::<SaleFigures>().await?.stock)
}

/// A just-started gateway (or its Redis) may need a moment.
async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            _ if Instant::now() > deadline => {
                anyhow::bail!("{base}/readyz did not answer 200 within 60 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        let t = time::macros::datetime!(2026-12-12 00:00:05.123456 +07:00);
        assert_eq!(rfc3339_ms(t), "2026-12-11T17:00:05.123Z");
    }
}
