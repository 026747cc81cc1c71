//! The headers the browser is told to hold us to (issue 27, CONTRACT.md
//! "Added this round (hardening)"): `X-Content-Type-Options: nosniff` on
//! every answer, `Cache-Control: no-store` on every answer to a request that
//! carries `Authorization` (a shared cache or the browser's back button must
//! not keep what a token unlocked), and on the HTML pages a strict
//! Content-Security-Policy with `Referrer-Policy: no-referrer`.
//!
//! One tower layer does both: its future only stamps headers on the response
//! on its way out, with values built once (statics, or the landing page's
//! policy made from `http.frame_ancestors` when the router is built), so a
//! request costs no allocation and no boxed future here.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Request, Response};

static NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
static NO_REFERRER: HeaderValue = HeaderValue::from_static("no-referrer");
/// `/ops` holds an admin token: no page of any origin may frame it, whatever
/// the configuration says.
static NEVER_FRAMED: HeaderValue =
    HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; base-uri 'none'");

/// Every answer's headers: wired once, outside every other layer, so the
/// fallbacks, CORS preflights and extractor rejections get them too.
pub(super) fn answers() -> Stamp {
    Stamp { page: None }
}

/// The on-call page's headers.
pub(super) fn ops_page() -> Stamp {
    Stamp {
        page: Some(NEVER_FRAMED.clone()),
    }
}

/// The landing page's headers: its `frame-ancestors` are the store's origins
/// that may embed it (`http.frame_ancestors`, checked at start by
/// `config::Settings::load`, so none of them can end the directive).
pub(super) fn landing_page(frame_ancestors: &[String]) -> Stamp {
    let policy = format!(
        "default-src 'self'; frame-ancestors {}; base-uri 'none'",
        frame_ancestors.join(" ")
    );
    // Unreachable with a checked configuration; the strictest policy is the
    // safe answer if it ever were.
    let csp = HeaderValue::from_str(&policy).unwrap_or_else(|_| NEVER_FRAMED.clone());
    Stamp { page: Some(csp) }
}

/// The layer: `page` is the Content-Security-Policy of a page's route, or
/// `None` for the layer over every answer.
#[derive(Clone)]
pub(super) struct Stamp {
    page: Option<HeaderValue>,
}

impl<S> tower::Layer<S> for Stamp {
    type Service = Stamped<S>;

    fn layer(&self, inner: S) -> Stamped<S> {
        Stamped {
            inner,
            page: self.page.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct Stamped<S> {
    inner: S,
    page: Option<HeaderValue>,
}

/// What one response gets, decided from its request.
enum Extra {
    Answer { authorized: bool },
    Page(HeaderValue),
}

impl Extra {
    fn apply(self, headers: &mut HeaderMap) {
        match self {
            Extra::Answer { authorized } => {
                headers.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF.clone());
                if authorized {
                    headers.insert(header::CACHE_CONTROL, NO_STORE.clone());
                }
            }
            Extra::Page(csp) => {
                headers.insert(header::CONTENT_SECURITY_POLICY, csp);
                headers.insert(header::REFERRER_POLICY, NO_REFERRER.clone());
            }
        }
    }
}

impl<S, B, RB> tower::Service<Request<B>> for Stamped<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    // Both places wrap axum's `Route`, whose future is Unpin (it polls a
    // boxed one): no pinning crate is needed to poll it in place.
    S::Future: Unpin,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Stamping<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let extra = match &self.page {
            None => Extra::Answer {
                authorized: req.headers().contains_key(header::AUTHORIZATION),
            },
            Some(csp) => Extra::Page(csp.clone()),
        };
        Stamping {
            inner: self.inner.call(req),
            extra: Some(extra),
        }
    }
}

pub(super) struct Stamping<F> {
    inner: F,
    extra: Option<Extra>,
}

impl<F, RB, E> Future for Stamping<F>
where
    F: Future<Output = Result<Response<RB>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let mut res = ready!(Pin::new(&mut this.inner).poll(cx))?;
        if let Some(extra) = this.extra.take() {
            extra.apply(res.headers_mut());
        }
        Poll::Ready(Ok(res))
    }
}
