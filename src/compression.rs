//! Content codings (`[compression]`): which coding a client gets, and the codecs that make it.
//!
//! **Stored once, in one coding.** A response the cache may store is fetched from the origin
//! with `Accept-Encoding` set to the store coding (`compression.store`, gzip by default) and,
//! when the origin answers in identity, compressed once as it streams into the store. Every
//! reader then serves that one body: a client that accepts the stored coding gets the stored
//! bytes as they are; any other client gets them decoded (identity), and only a client that
//! refuses identity (`identity;q=0`) and not the stored coding gets them re-encoded. No hit is
//! compressed for the common clients. Decoding is the price identity clients pay per hit
//! (measured in docs/BENCHMARKS.md).
//!
//! The same two steps run for every response, whichever reader produced it:
//! [`Compression::upstream_plan`] (the origin's header, before the store sees it: compress or
//! not) and [`Compression::client_plan`] (the header going to the client: pass, decode or
//! transcode, `Vary: Accept-Encoding`, a weakened `ETag` for a body whose bytes changed). The
//! fast path and any other hit writer call [`Compression::serve_stored`], which applies the
//! client plan to a whole stored body.
//!
//! The codecs are `flate2` (zlib-ng, as pingora-core builds it), `brotli` and `zstd`; the
//! streaming wrappers are ours because pingora-core's (`protocols/http/compression`) are private
//! to its module and have no zstd decoder.

use std::io::Write;

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::CompressionSettings;

/// Kept in a stored header the gateway compressed: the identity body's length, so that a
/// decoded hit carries a `Content-Length` from every reader. Never sent to a client.
pub const DECODED_LENGTH: &str = "raster-edge-decoded-length";

/// A content coding this gateway reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    Identity,
    Gzip,
    #[serde(rename = "br")]
    Brotli,
    Zstd,
    /// `deflate` (zlib): decoded when a client does not accept it, never produced.
    #[serde(skip)]
    Deflate,
}

/// Codings offered to clients, in the order ties of equal `q` are broken.
const OFFERED: [Encoding; 3] = [Encoding::Gzip, Encoding::Brotli, Encoding::Zstd];

impl Encoding {
    pub fn token(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gzip => "gzip",
            Self::Brotli => "br",
            Self::Zstd => "zstd",
            Self::Deflate => "deflate",
        }
    }

    pub fn from_token(t: &str) -> Option<Self> {
        let t = t.trim();
        [
            ("identity", Self::Identity),
            ("gzip", Self::Gzip),
            ("x-gzip", Self::Gzip),
            ("br", Self::Brotli),
            ("zstd", Self::Zstd),
            ("deflate", Self::Deflate),
        ]
        .into_iter()
        .find(|(name, _)| t.eq_ignore_ascii_case(name))
        .map(|(_, e)| e)
    }
}

/// A response's `Content-Encoding`, as far as the gateway can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coded {
    /// No coding (or `identity`).
    Plain,
    /// One coding the gateway can decode.
    Known(Encoding),
    /// Several codings or one it does not know: passed through untouched.
    Opaque,
}

pub fn content_coding(resp: &ResponseHeader) -> Coded {
    let mut codings = resp
        .headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("identity"));
    match (codings.next(), codings.next()) {
        (None, _) => Coded::Plain,
        (Some(t), None) => Encoding::from_token(t).map_or(Coded::Opaque, Coded::Known),
        _ => Coded::Opaque,
    }
}

/// What a client's `Accept-Encoding` allows, normalised to the codings the gateway knows
/// (RFC 9110 §12.5.3): `q` in thousandths, `*` for codings not listed, `identity` acceptable
/// unless excluded by `identity;q=0` or by `*;q=0` without an `identity` entry. A request
/// without the field (or with an empty one) gets identity only, as the issue for this gateway
/// asks: an old client that sends nothing must never see a coding it may not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    q: [Option<u16>; 5],
    star: Option<u16>,
}

impl Accepted {
    pub const IDENTITY_ONLY: Accepted = Accepted {
        q: [Some(1000), Some(0), Some(0), Some(0), Some(0)],
        star: None,
    };

    fn slot(e: Encoding) -> usize {
        match e {
            Encoding::Identity => 0,
            Encoding::Gzip => 1,
            Encoding::Brotli => 2,
            Encoding::Zstd => 3,
            Encoding::Deflate => 4,
        }
    }

    pub fn parse(req: &RequestHeader) -> Accepted {
        let mut values = req
            .headers
            .get_all(http::header::ACCEPT_ENCODING)
            .iter()
            .peekable();
        if values.peek().is_none() {
            return Self::IDENTITY_ONLY;
        }
        let mut out = Accepted {
            q: [None; 5],
            star: None,
        };
        let mut any = false;
        for v in values {
            let Ok(v) = v.to_str() else { continue };
            for member in v.split(',') {
                let mut parts = member.split(';');
                let name = parts.next().unwrap_or("").trim();
                if name.is_empty() {
                    continue;
                }
                any = true;
                let q = parts
                    .filter_map(|p| p.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                    .map_or(Some(1000), |(_, v)| qvalue(v.trim()));
                // An unreadable q-value makes the member meaningless: ignored.
                let Some(q) = q else { continue };
                if name == "*" {
                    out.star = Some(q);
                } else if let Some(e) = Encoding::from_token(name) {
                    let slot = &mut out.q[Self::slot(e)];
                    // The same coding twice: the most favourable entry wins.
                    *slot = Some(slot.map_or(q, |old| old.max(q)));
                }
            }
        }
        if !any {
            return Self::IDENTITY_ONLY;
        }
        out
    }

    /// The `q` (thousandths) this client gives `e`; 0 is "not acceptable".
    pub fn q(&self, e: Encoding) -> u16 {
        match (self.q[Self::slot(e)], e) {
            (Some(q), _) => q,
            (None, Encoding::Identity) => match self.star {
                Some(0) => 0,
                _ => 1,
            },
            (None, _) => self.star.unwrap_or(0),
        }
    }

    pub fn accepts(&self, e: Encoding) -> bool {
        self.q(e) > 0
    }

    /// The coding this client prefers among those offered: highest `q`, ties in
    /// [`OFFERED`] order; identity when none is acceptable.
    pub fn preferred(&self) -> Encoding {
        let mut best = (0u16, Encoding::Identity);
        for e in OFFERED {
            let q = self.q(e);
            if q > best.0 {
                best = (q, e);
            }
        }
        best.1
    }
}

/// RFC 9110 §12.4.2 `qvalue`: `0`–`1` with up to three decimals, in thousandths.
fn qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_val = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_val),
        "1" if frac_val == 0 => Some(1000),
        _ => None,
    }
}

/// The coding the gateway would give a client with this `Accept-Encoding`, for a body it may
/// compress: gzip, br, zstd or identity.
pub fn negotiate(accept_encoding: Option<&HeaderValue>) -> Encoding {
    let mut req = match RequestHeader::build("GET", b"/", None) {
        Ok(r) => r,
        Err(_) => return Encoding::Identity,
    };
    if let Some(v) = accept_encoding {
        if req.insert_header(http::header::ACCEPT_ENCODING, v).is_err() {
            return Encoding::Identity;
        }
    }
    Accepted::parse(&req).preferred()
}

/// A body codec step, streaming: `push` returns what it produced so far.
enum Step {
    GzEnc(flate2::write::GzEncoder<Vec<u8>>),
    GzDec(flate2::write::GzDecoder<Vec<u8>>),
    ZlibDec(flate2::write::ZlibDecoder<Vec<u8>>),
    // `into_inner` finishes a brotli stream, so the writer is taken out at the end.
    BrEnc(Option<Box<brotli::CompressorWriter<Vec<u8>>>>),
    BrDec(Box<brotli::DecompressorWriter<Vec<u8>>>),
    ZstdEnc(zstd::stream::write::Encoder<'static, Vec<u8>>),
    ZstdDec(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

fn io_err(m: &'static str) -> std::io::Error {
    std::io::Error::other(m)
}

impl Step {
    fn encoder(e: Encoding, s: &CompressionSettings) -> std::io::Result<Option<Step>> {
        Ok(Some(match e {
            Encoding::Gzip => Step::GzEnc(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(s.gzip_level),
            )),
            Encoding::Brotli => Step::BrEnc(Some(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                s.brotli_level,
                22,
            )))),
            Encoding::Zstd => {
                Step::ZstdEnc(zstd::stream::write::Encoder::new(Vec::new(), s.zstd_level)?)
            }
            Encoding::Identity | Encoding::Deflate => return Ok(None),
        }))
    }

    fn decoder(e: Encoding) -> std::io::Result<Option<Step>> {
        Ok(Some(match e {
            Encoding::Gzip => Step::GzDec(flate2::write::GzDecoder::new(Vec::new())),
            Encoding::Deflate => Step::ZlibDec(flate2::write::ZlibDecoder::new(Vec::new())),
            Encoding::Brotli => {
                Step::BrDec(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
            }
            Encoding::Zstd => Step::ZstdDec(zstd::stream::write::Decoder::new(Vec::new())?),
            Encoding::Identity => return Ok(None),
        }))
    }

    fn push(&mut self, input: &[u8], end: bool) -> std::io::Result<Vec<u8>> {
        match self {
            Step::GzEnc(w) => {
                w.write_all(input)?;
                if end {
                    w.try_finish()?;
                }
                Ok(std::mem::take(w.get_mut()))
            }
            Step::GzDec(w) => {
                w.write_all(input)?;
                if end {
                    w.try_finish()?;
                } else {
                    // flate2 keeps the last write's output until the next call.
                    w.flush()?;
                }
                Ok(std::mem::take(w.get_mut()))
            }
            Step::ZlibDec(w) => {
                w.write_all(input)?;
                if end {
                    w.try_finish()?;
                } else {
                    // flate2 keeps the last write's output until the next call.
                    w.flush()?;
                }
                Ok(std::mem::take(w.get_mut()))
            }
            Step::BrEnc(slot) => {
                let w = slot.as_mut().ok_or_else(|| io_err("brotli stream ended"))?;
                w.write_all(input)?;
                if end {
                    let w = slot.take().ok_or_else(|| io_err("brotli stream ended"))?;
                    Ok(w.into_inner())
                } else {
                    Ok(std::mem::take(w.get_mut()))
                }
            }
            Step::BrDec(w) => {
                w.write_all(input)?;
                if end {
                    w.close()?;
                } else {
                    w.flush()?;
                }
                Ok(std::mem::take(w.get_mut()))
            }
            Step::ZstdEnc(w) => {
                w.write_all(input)?;
                if end {
                    w.do_finish()?;
                }
                Ok(std::mem::take(w.get_mut()))
            }
            Step::ZstdDec(w) => {
                w.write_all(input)?;
                w.flush()?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
    }
}

/// A body transformation for one response: decode, encode, or both (transcode). The decoded
/// size is bounded (`compression.max_decoded_size`): a body that inflates past it is an error,
/// not an allocation.
pub struct Transform {
    decode: Option<Step>,
    encode: Option<Step>,
    decoded: usize,
    max_decoded: usize,
    /// Whether any body came through: a response that ends without one (a 304 or a HEAD
    /// served from a coded entry) has nothing to decode.
    seen: bool,
    /// The coded body's length, when known (a stored body): the body ends when that much came
    /// through. pingora's stale-serving path never calls the body filter with end-of-stream,
    /// so a stream that waited for it would never finish.
    expect: Option<usize>,
    consumed: usize,
}

impl Transform {
    pub fn push(&mut self, input: &[u8], end: bool) -> std::io::Result<Bytes> {
        self.consumed += input.len();
        let end = end || self.expect.is_some_and(|n| self.consumed >= n);
        self.seen |= !input.is_empty();
        if !self.seen && self.decode.is_some() {
            return Ok(Bytes::new());
        }
        let plain;
        let plain: &[u8] = match &mut self.decode {
            Some(d) => {
                plain = d.push(input, end)?;
                self.decoded += plain.len();
                if self.decoded > self.max_decoded {
                    return Err(io_err("decoded body over compression.max_decoded_size"));
                }
                &plain
            }
            None => input,
        };
        match &mut self.encode {
            Some(e) => e.push(plain, end).map(Bytes::from),
            None => Ok(Bytes::copy_from_slice(plain)),
        }
    }
}

// The zstd stream types hold raw pointers and are not `Sync`; a `Transform` is only ever used
// by the one request that owns it, through `&mut`.
pub struct SyncTransform(std::sync::Mutex<Transform>);

impl SyncTransform {
    pub fn push(&self, input: &[u8], end: bool) -> std::io::Result<Bytes> {
        match self.0.lock() {
            Ok(mut t) => t.push(input, end),
            Err(_) => Err(io_err("body transform poisoned")),
        }
    }
}

/// The configured codings, one per process.
#[derive(Debug, Clone)]
pub struct Compression {
    s: CompressionSettings,
}

impl Compression {
    pub fn new(s: &CompressionSettings) -> Self {
        Self { s: s.clone() }
    }

    pub fn enabled(&self) -> bool {
        self.s.enabled
    }

    pub fn settings(&self) -> &CompressionSettings {
        &self.s
    }

    fn transform(
        &self,
        decode: Encoding,
        encode: Encoding,
    ) -> std::io::Result<Option<SyncTransform>> {
        self.transform_sized(decode, encode, None)
    }

    fn transform_sized(
        &self,
        decode: Encoding,
        encode: Encoding,
        expect: Option<usize>,
    ) -> std::io::Result<Option<SyncTransform>> {
        let decode = Step::decoder(decode)?;
        let encode = Step::encoder(encode, &self.s)?;
        if decode.is_none() && encode.is_none() {
            return Ok(None);
        }
        Ok(Some(SyncTransform(std::sync::Mutex::new(Transform {
            decode,
            encode,
            decoded: 0,
            max_decoded: self.s.max_decoded_size,
            seen: false,
            expect,
            consumed: 0,
        }))))
    }

    /// A whole body decoded from `coding`, within `max_decoded_size`.
    pub fn decode_all(&self, coding: Encoding, body: &[u8]) -> std::io::Result<Bytes> {
        match self.transform(coding, Encoding::Identity)? {
            Some(t) => t.push(body, true),
            None => Ok(Bytes::copy_from_slice(body)),
        }
    }

    /// The `Accept-Encoding` the origin gets: the store coding for a request whose response
    /// may be stored (so the stored body never depends on which client missed first), the
    /// client's preferred coding otherwise. `None`: forward the client's field unchanged
    /// (compression off).
    pub fn upstream_accept(&self, client: &Accepted, storable: bool) -> Option<&'static str> {
        if !self.s.enabled {
            return None;
        }
        Some(if storable {
            self.s.store.token()
        } else {
            client.preferred().token()
        })
    }

    /// Whether a response of this header may be compressed by the gateway: a complete body
    /// of a type that is not already compressed, at least `min_size` long (when the length is
    /// known), no coding yet, and no `Cache-Control: no-transform` (RFC 9110 §7.7).
    fn compressible(&self, resp: &ResponseHeader, head_only: bool) -> bool {
        if !self.s.enabled || head_only || !matches!(resp.status.as_u16(), 200 | 203) {
            return false;
        }
        if content_coding(resp) != Coded::Plain
            || resp.headers.contains_key(http::header::CONTENT_RANGE)
        {
            return false;
        }
        let no_transform = resp
            .headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("no-transform"));
        if no_transform {
            return false;
        }
        let Some(ct) = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let ct = ct.trim().to_ascii_lowercase();
        if self.s.skip_types.iter().any(|p| ct.starts_with(p.as_str())) {
            return false;
        }
        let len = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        len.is_none_or(|n| n >= self.s.min_size)
    }

    /// The origin's response, before the store sees it: compressed into `target` (the store
    /// coding for a storable request, the client's preferred one otherwise) when it may be.
    /// Returns the body transform the body filter must run.
    pub fn upstream_plan(
        &self,
        resp: &mut ResponseHeader,
        target: Encoding,
        head_only: bool,
    ) -> pingora::Result<Option<SyncTransform>> {
        if target == Encoding::Identity || !self.compressible(resp, head_only) {
            return Ok(None);
        }
        let t = self
            .transform(Encoding::Identity, target)
            .map_err(|e| internal("compressor", e))?;
        resp.insert_header(http::header::CONTENT_ENCODING, target.token())?;
        if let Some(len) = resp.remove_header(&http::header::CONTENT_LENGTH) {
            resp.insert_header(DECODED_LENGTH, len)?;
        }
        weaken_etag(resp)?;
        Ok(t)
    }

    /// The header going to the client: what it needs done to the body it is about to get.
    /// A coding the client accepts passes; one it does not is decoded, and re-encoded into the
    /// client's preferred coding only when it refuses identity. `Vary: Accept-Encoding` is
    /// added to every response whose body is or was coded.
    pub fn client_plan(
        &self,
        resp: &mut ResponseHeader,
        client: &Accepted,
    ) -> pingora::Result<Option<SyncTransform>> {
        let decoded_length = resp.remove_header(DECODED_LENGTH);
        let have = match content_coding(resp) {
            Coded::Known(e) => e,
            // Nothing to undo, or nothing the gateway can undo.
            Coded::Plain | Coded::Opaque => return Ok(None),
        };
        add_vary_accept_encoding(resp)?;
        if client.accepts(have) {
            return Ok(None);
        }
        if matches!(resp.status.as_u16(), 204 | 304) {
            // No body: only the header stops claiming a coding the client refuses.
            resp.remove_header(&http::header::CONTENT_ENCODING);
            weaken_etag(resp)?;
            return Ok(None);
        }
        let target = if client.accepts(Encoding::Identity) || !self.s.enabled {
            Encoding::Identity
        } else {
            client.preferred()
        };
        let expect = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        let t = self
            .transform_sized(have, target, expect)
            .map_err(|e| internal("decompressor", e))?;
        resp.remove_header(&http::header::CONTENT_LENGTH);
        if target == Encoding::Identity {
            resp.remove_header(&http::header::CONTENT_ENCODING);
            if let Some(len) = decoded_length {
                // Only a body the gateway compressed itself has it: the length is exact. Pingora
                // made the coded body chunked (it had no length); the decoded one has a length
                // again, and RFC 9112 §6.3 forbids sending both.
                resp.remove_header(&http::header::TRANSFER_ENCODING);
                resp.insert_header(http::header::CONTENT_LENGTH, len)?;
            }
        } else {
            resp.insert_header(http::header::CONTENT_ENCODING, target.token())?;
        }
        weaken_etag(resp)?;
        Ok(t)
    }

    /// A stored response served whole (fast-path hits): the client plan applied to the stored
    /// body at once. `body` is `None` for a header-only answer. `Ok(None)` when the body cannot
    /// be decoded within bounds; the caller then leaves the request to the state machine.
    pub fn serve_stored(
        &self,
        header: &mut ResponseHeader,
        body: Option<Bytes>,
        client: &Accepted,
    ) -> pingora::Result<Option<Option<Bytes>>> {
        let Some(t) = self.client_plan(header, client)? else {
            return Ok(Some(body));
        };
        let Some(body) = body else {
            return Ok(Some(None));
        };
        match t.push(&body, true) {
            Ok(out) => {
                header.insert_header(http::header::CONTENT_LENGTH, out.len())?;
                Ok(Some(Some(out)))
            }
            Err(e) => {
                tracing::debug!(error = %e, "stored body does not decode; left to the state machine");
                Ok(None)
            }
        }
    }

    /// The header of a response about to be stored: with compression on, the origin was asked
    /// in the store coding whatever the client sent, so the stored body does not vary with the
    /// client's `Accept-Encoding` and the field is dropped from the stored `Vary` (one variant
    /// for every client; the field is added back on the way out).
    pub fn store_header(&self, header: &mut ResponseHeader) -> pingora::Result<()> {
        if !self.s.enabled {
            return Ok(());
        }
        if content_coding(header) != Coded::Plain {
            // A 304 merged into a body the gateway compressed may bring the origin's strong tag
            // back; the stored coded bytes are not what it names.
            weaken_etag(header)?;
        }
        if !header.headers.contains_key(http::header::VARY) {
            return Ok(());
        }
        let kept: Vec<String> = header
            .headers
            .get_all(http::header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("accept-encoding"))
            .map(str::to_string)
            .collect();
        header.remove_header(&http::header::VARY);
        if !kept.is_empty() {
            header.insert_header(http::header::VARY, kept.join(", "))?;
        }
        Ok(())
    }
}

fn internal(what: &'static str, e: std::io::Error) -> Box<pingora::Error> {
    pingora::Error::because(pingora::ErrorType::InternalError, what, e)
}

/// RFC 9110 §8.8.3: a strong validator names one exact byte sequence, and the coded and
/// decoded bodies are different ones; the weak form still matches `If-None-Match` (weak
/// comparison) and revalidation with the origin.
fn weaken_etag(resp: &mut ResponseHeader) -> pingora::Result<()> {
    let Some(tag) = resp.headers.get(http::header::ETAG) else {
        return Ok(());
    };
    if tag.as_bytes().starts_with(b"W/") {
        return Ok(());
    }
    let mut weak = b"W/".to_vec();
    weak.extend_from_slice(tag.as_bytes());
    let v = HeaderValue::from_bytes(&weak)
        .map_err(|e| pingora::Error::because(pingora::ErrorType::InternalError, "etag", e))?;
    resp.insert_header(http::header::ETAG, v)?;
    Ok(())
}

fn add_vary_accept_encoding(resp: &mut ResponseHeader) -> pingora::Result<()> {
    let present = resp
        .headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.eq_ignore_ascii_case("accept-encoding")
        });
    if present {
        return Ok(());
    }
    let joined = match resp
        .headers
        .get(http::header::VARY)
        .and_then(|v| v.to_str().ok())
    {
        Some(v) if !v.trim().is_empty() => format!("{v}, Accept-Encoding"),
        _ => "Accept-Encoding".to_string(),
    };
    resp.insert_header(http::header::VARY, joined)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(v: Option<&str>) -> Accepted {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        if let Some(v) = v {
            r.insert_header("accept-encoding", v).unwrap();
        }
        Accepted::parse(&r)
    }

    fn settings() -> CompressionSettings {
        let file = crate::config::parse("", "test", &[]).unwrap();
        crate::config::validate(file).unwrap().compression
    }

    #[test]
    fn negotiation_honours_q_values_identity_and_star() {
        use Encoding::*;
        let n = |v: &str| negotiate(Some(&HeaderValue::from_str(v).unwrap()));
        assert_eq!(negotiate(None), Identity);
        assert_eq!(n(""), Identity);
        assert_eq!(n("gzip, deflate"), Gzip);
        assert_eq!(n("gzip, deflate, br, zstd"), Gzip);
        assert_eq!(n("br;q=1.0, gzip;q=0.8"), Brotli);
        assert_eq!(n("gzip;q=0, br"), Brotli);
        assert_eq!(n("zstd"), Zstd);
        assert_eq!(n("*"), Gzip);
        assert_eq!(n("*;q=0.5, gzip;q=0"), Brotli);
        assert_eq!(n("identity"), Identity);
        assert_eq!(n("GZIP;Q=0.001"), Gzip);
        assert_eq!(
            n("gzip;q=2, br;q=abc"),
            Identity,
            "bad q-values are ignored"
        );
        assert_eq!(n("deflate"), Identity, "deflate is never produced");

        assert!(accepted(None).accepts(Identity));
        assert!(!accepted(None).accepts(Gzip));
        assert!(!accepted(Some("identity;q=0, gzip")).accepts(Identity));
        assert!(!accepted(Some("*;q=0")).accepts(Identity));
        assert!(accepted(Some("*;q=0, identity")).accepts(Identity));
        assert!(accepted(Some("br")).accepts(Identity));
    }

    fn json_resp(len: usize) -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-type", "application/json").unwrap();
        h.insert_header("content-length", len).unwrap();
        h.insert_header("etag", "\"v1\"").unwrap();
        h.insert_header("vary", "Api-Version").unwrap();
        h
    }

    #[test]
    fn every_coding_round_trips_and_decoding_is_bounded() {
        let c = Compression::new(&settings());
        let body: Vec<u8> = (0..20_000).map(|i| b"abcdefgh"[i % 8]).collect();
        for enc in OFFERED {
            let t = c.transform(Encoding::Identity, enc).unwrap().unwrap();
            let mut coded = t.push(&body[..5000], false).unwrap().to_vec();
            coded.extend_from_slice(&t.push(&body[5000..], true).unwrap());
            assert!(coded.len() < body.len() / 10, "{enc:?}");
            let d = c.transform(enc, Encoding::Identity).unwrap().unwrap();
            let mut plain = Vec::new();
            for chunk in coded.chunks(7) {
                plain.extend_from_slice(&d.push(chunk, false).unwrap());
            }
            plain.extend_from_slice(&d.push(&[], true).unwrap());
            assert_eq!(plain, body, "{enc:?}");
        }
        let mut s = settings();
        s.max_decoded_size = 1000;
        let small = Compression::new(&s);
        let t = c
            .transform(Encoding::Identity, Encoding::Gzip)
            .unwrap()
            .unwrap();
        let coded = t.push(&body, true).unwrap();
        let d = small
            .transform(Encoding::Gzip, Encoding::Identity)
            .unwrap()
            .unwrap();
        assert!(d.push(&coded, true).is_err());
    }

    #[test]
    fn a_sized_body_ends_without_an_end_of_stream_call() {
        let c = Compression::new(&settings());
        let body = vec![b'a'; 5000];
        let coded = c
            .transform(Encoding::Identity, Encoding::Gzip)
            .unwrap()
            .unwrap()
            .push(&body, true)
            .unwrap();
        for target in [Encoding::Identity, Encoding::Zstd] {
            let t = c
                .transform_sized(Encoding::Gzip, target, Some(coded.len()))
                .unwrap()
                .unwrap();
            let mut out = t.push(&coded[..10], false).unwrap().to_vec();
            out.extend_from_slice(&t.push(&coded[10..], false).unwrap());
            let plain = match target {
                Encoding::Zstd => zstd::stream::decode_all(&out[..]).unwrap(),
                _ => out,
            };
            assert_eq!(plain, body, "{target:?}");
        }
    }

    #[test]
    fn small_bodies_compressed_types_and_no_transform_stay_identity() {
        let c = Compression::new(&settings());
        let min = c.settings().min_size;
        let mut h = json_resp(min - 1);
        assert!(c
            .upstream_plan(&mut h, Encoding::Gzip, false)
            .unwrap()
            .is_none());
        let mut h = json_resp(min);
        assert!(c
            .upstream_plan(&mut h, Encoding::Gzip, false)
            .unwrap()
            .is_some());
        assert_eq!(h.headers["content-encoding"], "gzip");
        assert_eq!(h.headers["etag"], "W/\"v1\"");
        assert!(!h.headers.contains_key("content-length"));
        let mut h = json_resp(5000);
        h.insert_header("content-type", "image/png").unwrap();
        assert!(c
            .upstream_plan(&mut h, Encoding::Gzip, false)
            .unwrap()
            .is_none());
        let mut h = json_resp(5000);
        h.insert_header("cache-control", "max-age=5, no-transform")
            .unwrap();
        assert!(c
            .upstream_plan(&mut h, Encoding::Gzip, false)
            .unwrap()
            .is_none());
        let mut h = json_resp(5000);
        assert!(c
            .upstream_plan(&mut h, Encoding::Gzip, true)
            .unwrap()
            .is_none());
    }

    #[test]
    fn client_plan_decodes_for_clients_that_do_not_accept_and_varies() {
        let c = Compression::new(&settings());
        let mut h = json_resp(100);
        h.insert_header("content-encoding", "gzip").unwrap();
        let mut for_gzip = h.clone();
        assert!(c
            .client_plan(&mut for_gzip, &accepted(Some("gzip, br")))
            .unwrap()
            .is_none());
        assert_eq!(for_gzip.headers["vary"], "Api-Version, Accept-Encoding");
        assert_eq!(for_gzip.headers["content-encoding"], "gzip");
        let mut plain = h.clone();
        assert!(c
            .client_plan(&mut plain, &accepted(None))
            .unwrap()
            .is_some());
        assert!(!plain.headers.contains_key("content-encoding"));
        assert!(!plain.headers.contains_key("content-length"));
        assert_eq!(plain.headers["vary"], "Api-Version, Accept-Encoding");
        let mut br_only = h.clone();
        assert!(c
            .client_plan(&mut br_only, &accepted(Some("br, identity;q=0")))
            .unwrap()
            .is_some());
        assert_eq!(br_only.headers["content-encoding"], "br");
    }

    #[test]
    fn stored_vary_drops_accept_encoding_only_when_compressing() {
        let c = Compression::new(&settings());
        let mut h = json_resp(1);
        h.insert_header("vary", "Api-Version, accept-encoding")
            .unwrap();
        c.store_header(&mut h).unwrap();
        assert_eq!(h.headers["vary"], "Api-Version");
        let mut s = settings();
        s.enabled = false;
        let mut h2 = json_resp(1);
        h2.insert_header("vary", "Accept-Encoding").unwrap();
        Compression::new(&s).store_header(&mut h2).unwrap();
        assert_eq!(h2.headers["vary"], "Accept-Encoding");
    }
}
