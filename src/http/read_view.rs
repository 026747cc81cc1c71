//! Read-your-writes: a gateway's shared view of the sales (`engine::live`)
//! is told about the writes made through it, once they are answered, so the
//! writer's next read of a sale sees its write. The handler that wrote says
//! what it wrote by leaving [`Wrote`] on its response, success or failure;
//! no URL is read here.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{client_ip, AppState};
use crate::domain::SaleId;

/// What a write touched.
#[derive(Debug, Clone)]
pub(crate) enum Wrote {
    /// Holds of this sale (a reserve, confirm, release or extension): the
    /// writer's next reads of it see the write.
    Sale(SaleId),
    /// A sale was created or changed by an admin: every reader's next read
    /// is fresh, not only the writer's.
    AllSales,
}

/// A handler's answer, whatever it is, marked with what the handler wrote:
/// a 5xx (Redis timed out after the script ran, say) may have written too.
pub(crate) struct Noted<T>(pub Wrote, pub T);

impl<T: IntoResponse> IntoResponse for Noted<T> {
    fn into_response(self) -> Response {
        let mut res = self.1.into_response();
        res.extensions_mut().insert(self.0);
        res
    }
}

/// Tells the shared view about the write a response carries. Refusals (4xx)
/// changed nothing and are not noted; 5xx may have, so they are.
pub(super) async fn note_writes(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    use axum::http::Method;
    // Reads never write: they skip working out the client's address.
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let ip = client_ip(&state, &parts);
    let res = next.run(Request::from_parts(parts, body)).await;
    if res.status().is_client_error() {
        return res;
    }
    match res.extensions().get::<Wrote>() {
        Some(Wrote::Sale(sale)) => state.live.wrote(sale, ip),
        Some(Wrote::AllSales) => state.live.refresh_all(),
        None => {}
    }
    res
}
