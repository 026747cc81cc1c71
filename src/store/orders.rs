//! The `orders` and `dead_letters` tables: what customers bought.

use sqlx::postgres::PgPool;
use time::OffsetDateTime;

use super::StoreResult;
use crate::domain::{NewOrder, ReservationId, SaleId};

/// Writes a batch of orders in one round trip. An order already there (same
/// reservation id: a batch flushed twice after a crash) is skipped, so a
/// retry never writes a second row. Returns the rows actually inserted.
pub async fn insert_orders<'e>(
    db: impl sqlx::PgExecutor<'e>,
    orders: &[NewOrder],
) -> Result<u64, sqlx::Error> {
    let col = |f: fn(&NewOrder) -> String| orders.iter().map(f).collect::<Vec<_>>();
    let result = sqlx::query!(
        "INSERT INTO orders (order_id, reservation_id, sale_id, customer_id, quantity,
                             price_cents, currency, payment_ref, confirmed_at, expires_at,
                             confirmed_by)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[],
                              $6::bigint[], $7::text[], $8::text[], $9::timestamptz[],
                              $10::timestamptz[], $11::text[])
         ON CONFLICT (reservation_id) DO NOTHING",
        &orders.iter().map(|o| o.order_id).collect::<Vec<_>>(),
        &col(|o| o.reservation_id.clone()),
        &col(|o| o.sale_id.clone()),
        &col(|o| o.customer_id.clone()),
        &orders.iter().map(|o| o.quantity).collect::<Vec<_>>(),
        &orders.iter().map(|o| o.price_cents).collect::<Vec<_>>(),
        &col(|o| o.currency.clone()),
        &col(|o| o.payment_ref.clone()),
        &orders.iter().map(|o| o.confirmed_at).collect::<Vec<_>>(),
        // Typed by hand: Postgres describes an array parameter's type but
        // not whether its elements may be NULL, and these two may.
        &orders.iter().map(|o| o.expires_at).collect::<Vec<_>>() as &[Option<OffsetDateTime>],
        &orders
            .iter()
            .map(|o| o.confirmed_by.clone())
            .collect::<Vec<_>>() as &[Option<String>],
    )
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

/// Units ordered per customer (their confirmed purchases count against the
/// per-customer limit after a rebuild).
pub async fn units_per_customer(db: &PgPool, sale_id: &SaleId) -> StoreResult<Vec<(String, i64)>> {
    // `!`: a group has rows, and `quantity` is never NULL.
    let rows = sqlx::query!(
        r#"SELECT customer_id, sum(quantity)::bigint AS "units!"
           FROM orders WHERE sale_id = $1 GROUP BY 1"#,
        sale_id.as_str(),
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.customer_id, r.units)).collect())
}

/// The order of a reservation, from Postgres.
pub async fn order_of(
    db: &PgPool,
    reservation_id: &ReservationId,
) -> StoreResult<Option<NewOrder>> {
    let row = sqlx::query!(
        "SELECT order_id, reservation_id, sale_id, customer_id, quantity, price_cents, currency,
                payment_ref, confirmed_at, expires_at, confirmed_by
         FROM orders WHERE reservation_id = $1",
        reservation_id.as_str(),
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| NewOrder {
        order_id: row.order_id,
        reservation_id: row.reservation_id,
        sale_id: row.sale_id,
        customer_id: row.customer_id,
        quantity: row.quantity,
        price_cents: row.price_cents,
        currency: row.currency,
        payment_ref: row.payment_ref,
        confirmed_at: row.confirmed_at,
        expires_at: row.expires_at,
        confirmed_by: row.confirmed_by,
    }))
}

/// Copies dead letters of a sale to Postgres (again is a no-op).
pub async fn keep_dead_letters(
    db: &PgPool,
    sale_id: &SaleId,
    letters: &[(String, serde_json::Value)],
) -> StoreResult<()> {
    for (entry_id, fields) in letters {
        sqlx::query!(
            "INSERT INTO dead_letters (sale_id, entry_id, fields) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            sale_id.as_str(),
            entry_id,
            fields,
        )
        .execute(db)
        .await?;
    }
    Ok(())
}
