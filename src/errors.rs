//! Everything the gateway answers by itself uses Raster's own envelope
//! `{"error":{"code":"…","message":"…"}}`, so clients see one contract whether the answer came
//! from the origin or from the edge. This module owns the gateway's error codes and statuses and
//! the one function that writes such a response on a Pingora session.

use bytes::Bytes;
use pingora::http::ResponseHeader;

/// The errors the gateway itself answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("missing or malformed Authorization header; send \"Authorization: Bearer <api key>\"")]
    Unauthenticated,
    #[error("missing Api-Version header; send \"Api-Version: <date>\", e.g. 2026-05-20")]
    ApiVersionRequired,
    #[error(
        "rate limit exceeded for this API key; retry after the number of seconds in Retry-After"
    )]
    RateLimited,
    #[error("the Raster API could not be reached")]
    UpstreamUnavailable,
    #[error("the Raster API did not answer in time")]
    UpstreamTimeout,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("request header fields too large")]
    HeaderFieldsTooLarge,
    #[error("malformed request")]
    BadRequest,
    #[error("endpoint not found")]
    EndpointNotFound,
    #[error("internal gateway error")]
    Internal,
}

impl GatewayError {
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::ApiVersionRequired => 400,
            Self::RateLimited => 429,
            Self::UpstreamUnavailable => 502,
            Self::UpstreamTimeout => 504,
            Self::PayloadTooLarge => 413,
            Self::HeaderFieldsTooLarge => 431,
            Self::BadRequest => 400,
            Self::EndpointNotFound => 404,
            Self::Internal => 500,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::ApiVersionRequired => "API_VERSION_REQUIRED",
            Self::RateLimited => "RATE_LIMITED",
            Self::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::HeaderFieldsTooLarge => "REQUEST_HEADER_FIELDS_TOO_LARGE",
            Self::BadRequest => "BAD_REQUEST",
            Self::EndpointNotFound => "ENDPOINT_NOT_FOUND",
            Self::Internal => "INTERNAL_SERVER_ERROR",
        }
    }

    /// The JSON envelope for this error.
    pub fn body(self) -> Bytes {
        envelope(self.code(), &self.to_string())
    }
}

/// `{"error":{"code":…,"message":…}}`
pub fn envelope(code: &str, message: &str) -> Bytes {
    let v = serde_json::json!({ "error": { "code": code, "message": message } });
    Bytes::from(v.to_string())
}

/// A complete error response: status, `content-type`, `content-length`, `cache-control:
/// no-store`, and the envelope as its body. The gateway decorates and sends it
/// ([`crate::response::send`]).
pub fn response(err: GatewayError) -> pingora::Result<(ResponseHeader, Bytes)> {
    let body = err.body();
    let mut h = ResponseHeader::build(err.status(), Some(6))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("cache-control", "no-store")?;
    Ok((h, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_rasters_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&GatewayError::RateLimited.body()).unwrap();
        assert_eq!(v["error"]["code"], "RATE_LIMITED");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Retry-After"));
        assert_eq!(GatewayError::RateLimited.status(), 429);
        assert_eq!(GatewayError::UpstreamTimeout.status(), 504);
    }

    #[test]
    fn envelope_escapes_messages() {
        let b = envelope("X", "a \"quoted\" \\ message");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["message"], "a \"quoted\" \\ message");
    }
}
