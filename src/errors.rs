//! Everything the gateway answers by itself uses Raster's own envelope
//! `{"error":{"code":"…","message":"…"}}`, so clients see one contract whether the answer came
//! from the origin or from the edge. This module owns the gateway's error codes and statuses and
//! the one function that writes such a response on a Pingora session.

use bytes::Bytes;
use pingora::http::ResponseHeader;

/// Methods the gateway forwards (the `Allow` header of a 405).
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

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
    /// The origin could not be reached; the reason says why (refused, does not resolve, …).
    #[error("the Raster API could not be reached: {0}")]
    UpstreamUnavailable(&'static str),
    #[error("the Raster API did not answer in time: {0}")]
    UpstreamTimeout(&'static str),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("request header fields too large")]
    HeaderFieldsTooLarge,
    #[error("request header section larger than server.max_header_size")]
    HeaderSectionTooLarge,
    #[error("more request header fields than server.max_header_count")]
    TooManyHeaders,
    #[error("request target longer than server.max_uri_length")]
    UriTooLong,
    #[error("malformed request")]
    BadRequest,
    /// A header that must appear at most once appeared more than once (the name is given).
    #[error("more than one {0} header; send it exactly once")]
    DuplicateHeader(&'static str),
    /// A request whose target or framing is refused; the reason is given.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// TRACE, CONNECT and methods Raster does not define.
    #[error("method not allowed through the gateway; allowed: {ALLOWED_METHODS}")]
    MethodNotAllowed,
    #[error("endpoint not found")]
    EndpointNotFound,
    #[error("internal gateway error")]
    Internal,
    /// The request head did not arrive whole within `server.header_timeout` (a slow or stalled
    /// client: slowloris).
    #[error("request header not received within server.header_timeout")]
    RequestTimeout,
}

impl GatewayError {
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::ApiVersionRequired => 400,
            Self::RateLimited => 429,
            Self::UpstreamUnavailable(_) => 502,
            Self::UpstreamTimeout(_) => 504,
            Self::PayloadTooLarge => 413,
            Self::HeaderFieldsTooLarge | Self::HeaderSectionTooLarge | Self::TooManyHeaders => 431,
            Self::UriTooLong => 414,
            Self::BadRequest | Self::DuplicateHeader(_) | Self::Malformed(_) => 400,
            Self::MethodNotAllowed => 405,
            Self::EndpointNotFound => 404,
            Self::Internal => 500,
            Self::RequestTimeout => 408,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::ApiVersionRequired => "API_VERSION_REQUIRED",
            Self::RateLimited => "RATE_LIMITED",
            Self::UpstreamUnavailable(_) => "UPSTREAM_UNAVAILABLE",
            Self::UpstreamTimeout(_) => "UPSTREAM_TIMEOUT",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::HeaderFieldsTooLarge | Self::HeaderSectionTooLarge | Self::TooManyHeaders => {
                "REQUEST_HEADER_FIELDS_TOO_LARGE"
            }
            Self::UriTooLong => "URI_TOO_LONG",
            Self::BadRequest | Self::DuplicateHeader(_) | Self::Malformed(_) => "BAD_REQUEST",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::EndpointNotFound => "ENDPOINT_NOT_FOUND",
            Self::Internal => "INTERNAL_SERVER_ERROR",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
        }
    }

    /// Refusals of a request whose framing or intent is in doubt: the connection is closed after
    /// the answer, so nothing the client sent after it is read as another request.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Self::HeaderSectionTooLarge
                | Self::TooManyHeaders
                | Self::UriTooLong
                | Self::DuplicateHeader(_)
                | Self::Malformed(_)
                | Self::RequestTimeout
        )
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
/// no-store` (and `Allow` on a 405), with the envelope as its body. The gateway decorates and
/// sends it ([`crate::response::send`]).
pub fn response(err: GatewayError) -> pingora::Result<(ResponseHeader, Bytes)> {
    let body = err.body();
    let mut h = ResponseHeader::build(err.status(), Some(6))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("cache-control", "no-store")?;
    if err == GatewayError::MethodNotAllowed {
        h.insert_header("allow", ALLOWED_METHODS)?;
    }
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
        assert_eq!(GatewayError::UpstreamTimeout("read").status(), 504);
    }

    #[test]
    fn duplicate_and_limit_errors_say_what_was_wrong() {
        let d = GatewayError::DuplicateHeader("Authorization");
        assert_eq!((d.status(), d.code()), (400, "BAD_REQUEST"));
        assert!(d.to_string().contains("Authorization"), "{d}");
        let h = GatewayError::HeaderSectionTooLarge;
        assert_eq!(
            (h.status(), h.code()),
            (431, "REQUEST_HEADER_FIELDS_TOO_LARGE")
        );
        assert!(h.to_string().contains("server.max_header_size"));
        assert_eq!(GatewayError::UriTooLong.code(), "URI_TOO_LONG");
        assert_eq!(GatewayError::UriTooLong.status(), 414);
        let u = GatewayError::UpstreamUnavailable("its host name does not resolve");
        assert_eq!((u.status(), u.code()), (502, "UPSTREAM_UNAVAILABLE"));
        assert!(u.to_string().contains("does not resolve"));
        assert!(d.closes_connection() && !GatewayError::Unauthenticated.closes_connection());
    }

    #[test]
    fn envelope_escapes_messages() {
        let b = envelope("X", "a \"quoted\" \\ message");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["message"], "a \"quoted\" \\ message");
    }
}
