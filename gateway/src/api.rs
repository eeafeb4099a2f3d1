//! The gateway's view of the tokio tier for plain HTTP: REST requests are
//! forwarded whole and answered whole. Embedded mode implements this with a
//! channel into the tokio runtime; the gateway never sees SQL or sessions.

use bytes::Bytes;
use futures_util::future::BoxFuture;

#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// End-to-end headers (hop-by-hop ones removed), names lowercase.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl ApiResponse {
    pub fn content_type(&self) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str())
            .unwrap_or("application/octet-stream")
    }
}

/// Answers REST requests. The future is executor-agnostic (glommio polls it).
pub trait ApiBackend: Send + Sync + 'static {
    fn call(&self, req: ApiRequest) -> BoxFuture<'static, ApiResponse>;
}

/// Headers that describe one hop, never forwarded.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "upgrade" | "transfer-encoding" | "te" | "trailer" | "proxy-connection"
    )
}
