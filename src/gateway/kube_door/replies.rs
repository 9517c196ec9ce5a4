//! What the front door answers itself: errors kubectl can read, and the
//! response body that a revocation cuts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Response, StatusCode};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::kube::request::RequestInfo;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(super) type Reply = Response<BoxBody<Bytes, BoxError>>;

/// The gateway's own answer to a request it does not pass on.
///
/// For a resource request, a Kubernetes `Status` (JSON), which kubectl
/// prints as `Error from server (Reason): message`. For discovery
/// (`/api`, `/apis`, `/version`, …), whose errors client-go reads only as
/// text and replaces for a 503 with a fixed sentence, plain text, and 502
/// instead of 503 so the message (and the command that fixes it) reaches
/// the user.
pub(super) fn answer(info: &RequestInfo, code: StatusCode, message: &str) -> Reply {
    if info.resource.is_some() {
        return status(code, message);
    }
    let code = if code == StatusCode::SERVICE_UNAVAILABLE {
        StatusCode::BAD_GATEWAY
    } else {
        code
    };
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A Kubernetes `Status` object.
pub(super) fn status_object(code: StatusCode, message: &str) -> serde_json::Value {
    let reason = match code {
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        _ => "InternalError",
    };
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

/// A Kubernetes `Status` answer.
pub(super) fn status(code: StatusCode, message: &str) -> Reply {
    let body = status_object(code, message);
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub(super) fn empty() -> BoxBody<Bytes, BoxError> {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// A response body from the API server that ends in an error when access
/// is revoked: a watch or `logs -f` is cut, not left open.
pub(super) struct Cut {
    pub(super) inner: Incoming,
    pub(super) cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Sent once when cut, then the stream ends.
    pub(super) last_word: Option<Bytes>,
    pub(super) said: bool,
    /// The account's place among its requests in flight, held while the
    /// body streams.
    pub(super) _permit: tokio::sync::OwnedSemaphorePermit,
    /// Keeps the door from counting as idle while the body streams.
    pub(super) _busy: super::Busy,
}

impl Body for Cut {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(match this.last_word.take() {
                Some(word) => {
                    this.said = true;
                    Some(Ok(Frame::data(word)))
                }
                // A watch ends cleanly after its ERROR event, as the API
                // server ends one; anything else is cut short.
                None if this.said => None,
                None => Some(Err("access revoked".into())),
            });
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
