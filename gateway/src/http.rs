//! The HTTP/1.1 front of every gateway connection: request heads parsed with
//! httparse, the WebSocket upgrade checked per RFC 6455 section 4.2.1, and
//! plain responses written for REST, health and metrics. Pure functions; the
//! shard's I/O loop owns the socket.

use bytes::Bytes;

/// A parsed request head. Only what routing and the upgrade need is kept.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
    /// HTTP/1.0 closes by default; 1.1 keeps alive.
    pub version_minor: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed http request: {0}")]
    Malformed(String),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
}

impl RequestHead {
    /// Parse a head from the front of `buf`: Ok(None) means more bytes are needed.
    pub fn parse(buf: &[u8], max_head: usize) -> Result<Option<Self>, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                if len > max_head {
                    return Err(HttpError::HeadTooLarge(max_head));
                }
                Ok(Some(Self {
                    method: req.method.unwrap_or("").to_owned(),
                    target: req.path.unwrap_or("/").to_owned(),
                    headers: req.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect(),
                    head_len: len,
                    version_minor: req.version.unwrap_or(1),
                }))
            }
            Ok(httparse::Status::Partial) if buf.len() >= max_head => Err(HttpError::HeadTooLarge(max_head)),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(HttpError::Malformed(e.to_string())),
        }
    }

    /// First value of a header (name matched case-insensitively), as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// Whether a comma-separated header contains `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub fn path(&self) -> &str {
        self.target.split_once('?').map(|(p, _)| p).unwrap_or(&self.target)
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// Value of a query parameter (percent-decoding `%XX` and `+`).
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then(|| percent_decode(v))
        })
    }

    pub fn keep_alive(&self) -> bool {
        if self.header_has_token("connection", "close") {
            return false;
        }
        self.version_minor >= 1 || self.header_has_token("connection", "keep-alive")
    }

    /// Declared body length; chunked bodies are not accepted (411).
    pub fn content_length(&self) -> Result<usize, HttpError> {
        if self.header("transfer-encoding").is_some() {
            return Err(HttpError::Malformed("transfer-encoding is not supported; send content-length".into()));
        }
        match self.header("content-length") {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| HttpError::Malformed("invalid content-length".into())),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a request-target is not forwarded to the tokio tier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Not a clean origin-form target (RFC 9112 section 3.2.1): absolute-form,
    /// authority-form, `//host`, backslashes, dot segments, encoded slashes,
    /// control or non-ASCII bytes. Answered 400.
    #[error("request target must be an origin-form path without dot segments, encoded slashes or backslashes")]
    NotOriginForm,
    /// A clean path the API does not own. Answered 404.
    #[error("no such endpoint")]
    NotApi,
}

/// The paths the gateway forwards to the tokio tier.
pub fn is_api_path(path: &str) -> bool {
    path.starts_with("/api/") || path == "/readyz"
}

/// Check a request-target before it is forwarded: it must be a clean
/// origin-form target (`/path?query`) under a path the API owns. The upstream
/// URL is then built from it with a URL type (never by concatenation), so no
/// target can name another host, port, scheme or userinfo.
pub fn api_target(target: &str) -> Result<(&str, Option<&str>), TargetError> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let b = path.as_bytes();
    if b.first() != Some(&b'/') || b.get(1) == Some(&b'/') {
        return Err(TargetError::NotOriginForm);
    }
    // Visible ASCII only, no fragment, no backslash (some URL parsers read it as '/').
    let clean = |s: &str| s.bytes().all(|c| c.is_ascii_graphic() && c != b'\\' && c != b'#');
    if !clean(path) || !query.is_none_or(clean) {
        return Err(TargetError::NotOriginForm);
    }
    for segment in path.split('/').skip(1) {
        let decoded = percent_decode_bytes(segment.as_bytes());
        if decoded == b"."
            || decoded == b".."
            || decoded.iter().any(|&c| c == b'/' || c == b'\\' || c < 0x20 || c == 0x7f)
        {
            return Err(TargetError::NotOriginForm);
        }
    }
    if !is_api_path(path) {
        return Err(TargetError::NotApi);
    }
    Ok((path, query))
}

/// `%XX` decoding only (no `+`): how a path segment is read.
fn percent_decode_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
            .flatten();
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// Why an upgrade request is refused (HTTP 400 / 426).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpgradeError {
    #[error("websocket upgrade requires GET")]
    NotGet,
    #[error("missing or invalid Upgrade: websocket / Connection: Upgrade headers")]
    NotUpgrade,
    #[error("unsupported Sec-WebSocket-Version (13 required)")]
    BadVersion,
    #[error("missing or invalid Sec-WebSocket-Key")]
    BadKey,
}

/// Check the upgrade headers; returns the `Sec-WebSocket-Accept` value.
pub fn websocket_accept(head: &RequestHead) -> Result<String, UpgradeError> {
    if head.method != "GET" {
        return Err(UpgradeError::NotGet);
    }
    if !head.header_has_token("upgrade", "websocket") || !head.header_has_token("connection", "upgrade") {
        return Err(UpgradeError::NotUpgrade);
    }
    if head.header("sec-websocket-version") != Some("13") {
        return Err(UpgradeError::BadVersion);
    }
    let key = head.header("sec-websocket-key").ok_or(UpgradeError::BadKey)?;
    // A valid key is 16 random bytes, base64: 24 characters ending in "==".
    if key.len() != 24 || !key.ends_with("==") {
        return Err(UpgradeError::BadKey);
    }
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
        .into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A complete response with a body.
pub fn response(
    status: u16,
    content_type: &str,
    extra_headers: &[(String, String)],
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    for (k, v) in extra_headers {
        if !k.eq_ignore_ascii_case("content-type")
            && !k.eq_ignore_ascii_case("content-length")
            && !k.eq_ignore_ascii_case("connection")
        {
            out.push_str(k);
            out.push_str(": ");
            out.push_str(v);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A protocol v1 JSON error response.
pub fn error_response(status: u16, code: &str, message: &str, keep_alive: bool) -> Vec<u8> {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let mut headers = Vec::new();
    if status == 401 {
        headers.push(("WWW-Authenticate".to_owned(), "Bearer".to_owned()));
    }
    response(status, "application/json", &headers, body.as_bytes(), keep_alive)
}

/// Static body helper for tests and probes.
pub fn text(status: u16, body: &'static str) -> Bytes {
    Bytes::from(response(status, "text/plain; charset=utf-8", &[], body.as_bytes(), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /ws?token=a%2Bb+c HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nEXTRA";

    #[test]
    fn parses_upgrade_and_derives_rfc_accept_key() {
        let head = RequestHead::parse(UPGRADE, 8192).unwrap().unwrap();
        assert_eq!(head.path(), "/ws");
        assert_eq!(head.query_param("token").as_deref(), Some("a+b c"));
        assert_eq!(&UPGRADE[head.head_len..], b"EXTRA");
        // RFC 6455 section 1.3 example
        assert_eq!(websocket_accept(&head).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn partial_oversized_and_malformed_heads() {
        assert_eq!(RequestHead::parse(&UPGRADE[..20], 8192), Ok(None));
        assert_eq!(RequestHead::parse(&UPGRADE[..60], 40), Err(HttpError::HeadTooLarge(40)));
        assert!(matches!(
            RequestHead::parse(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 8192),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn upgrade_checks() {
        let h = |s: &str| RequestHead::parse(s.as_bytes(), 8192).unwrap().unwrap();
        assert_eq!(websocket_accept(&h("POST /ws HTTP/1.1\r\n\r\n")), Err(UpgradeError::NotGet));
        assert_eq!(
            websocket_accept(&h("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")),
            Err(UpgradeError::NotUpgrade)
        );
        assert_eq!(
            websocket_accept(&h(
                "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n"
            )),
            Err(UpgradeError::BadVersion)
        );
        assert_eq!(
            websocket_accept(&h("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n")),
            Err(UpgradeError::BadKey)
        );
    }

    #[test]
    fn api_targets_are_clean_origin_form_under_the_api() {
        assert_eq!(api_target("/api/v1/users/me"), Ok(("/api/v1/users/me", None)));
        assert_eq!(api_target("/readyz"), Ok(("/readyz", None)));
        assert_eq!(
            api_target("/api/v1/conversations/s_1_2/messages?after_seq=0&limit=5"),
            Ok(("/api/v1/conversations/s_1_2/messages", Some("after_seq=0&limit=5")))
        );
        assert_eq!(api_target("/api/v1/a%20b"), Ok(("/api/v1/a%20b", None)));
        for bad in [
            "@127.0.0.1:9/x",
            "@169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:9/api/v1/x",
            "127.0.0.1:9",
            "//127.0.0.1:9/api/v1/x",
            "/\\127.0.0.1:9/api/",
            "/api\\..\\x",
            "/api/../x",
            "/api/./x",
            "/api/%2e%2e/x",
            "/api/%2E%2e/%2e%2e/readyz",
            "/api/v1%2f..%2f..%2fx",
            "/api/v1%5c..",
            "/api/v1/%00",
            "/api/v1/x#frag",
            "/api/v1/x?a=b#frag",
            "/api/v1/\u{e9}",
            "*",
            "",
        ] {
            assert_eq!(api_target(bad), Err(TargetError::NotOriginForm), "{bad:?}");
        }
        for elsewhere in ["/", "/apix", "/api", "/latest/meta-data/", "/readyz/x", "/%61pi/v1/x"] {
            assert_eq!(api_target(elsewhere), Err(TargetError::NotApi), "{elsewhere:?}");
        }
    }

    #[test]
    fn keep_alive_and_content_length() {
        let h = |s: &str| RequestHead::parse(s.as_bytes(), 8192).unwrap().unwrap();
        assert!(h("GET / HTTP/1.1\r\n\r\n").keep_alive());
        assert!(!h("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!h("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert_eq!(h("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n").content_length(), Ok(12));
        assert!(h("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").content_length().is_err());
        let r = String::from_utf8(error_response(401, "unauthorized", "no", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(r.contains("WWW-Authenticate: Bearer\r\n"));
        assert!(r.ends_with(r#"{"error":{"code":"unauthorized","message":"no"}}"#));
    }
}
