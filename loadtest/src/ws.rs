//! The WebSocket client side: connect (optionally from a chosen source address)
//! and classify failures by cause.

use futures_util::SinkExt;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

fn io_cause(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused".into(),
        ConnectionReset => "reset".into(),
        TimedOut => "timeout".into(),
        AddrNotAvailable => "addr_not_available".into(),
        _ if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) => "fd_limit".into(),
        _ => format!("io_{:?}", e.kind()).to_lowercase(),
    }
}

/// Open an authenticated WebSocket to `addr` (TCP connect -> 101 within `timeout`).
/// Err holds the failure cause: `refused`, `timeout`, `http_<status>`, `fd_limit`, `bind`, ...
pub async fn connect(addr: SocketAddr, token: &str, src: Option<Ipv4Addr>, timeout: Duration) -> Result<Ws, String> {
    let fut = async {
        let sock = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| io_cause(&e))?;
        if let Some(ip) = src {
            sock.bind(SocketAddr::new(IpAddr::V4(ip), 0)).map_err(|e| format!("bind_{}", io_cause(&e)))?;
        }
        let stream = sock.connect(addr).await.map_err(|e| io_cause(&e))?;
        let _ = stream.set_nodelay(true);
        let url = format!("ws://{addr}/ws?token={token}");
        match tokio_tungstenite::client_async(url, stream).await {
            Ok((ws, _resp)) => Ok(ws),
            Err(WsError::Http(resp)) => Err(format!("http_{}", resp.status().as_u16())),
            Err(WsError::Io(e)) => Err(io_cause(&e)),
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Err("closed".into()),
            Err(e) => Err(format!("ws_{}", short(&e.to_string()))),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}

fn short(s: &str) -> String {
    s.chars().take(40).map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

pub async fn send_json(ws: &mut Ws, v: &Value) -> Result<(), String> {
    ws.send(Message::text(v.to_string())).await.map_err(|e| format!("send_{}", short(&e.to_string())))
}

/// Close politely and drain until the server's close (or 2 s).
pub async fn close(mut ws: Ws) {
    use futures_util::StreamExt;
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// Parse "a.b.c.d-a.b.c.e" (or a single address) into the list of addresses.
pub fn parse_ip_range(s: &str) -> Result<Vec<Ipv4Addr>, String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("bad address {a:?}"))?;
    let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("bad address {b:?}"))?;
    let (lo, hi) = (u32::from(a), u32::from(b));
    if lo > hi {
        return Err(format!("empty range {s:?}"));
    }
    if hi - lo >= 1 << 20 {
        return Err(format!("range {s:?} is too large"));
    }
    Ok((lo..=hi).map(Ipv4Addr::from).collect())
}

/// Application-level ping period of the scenarios' connections.
pub const HEARTBEAT: Duration = Duration::from_secs(20);

/// The k-th load-test message: `client_msg_id` `{prefix}{k}`, addressed by
/// `to` (`("conversation_id", cid)` or `("to_user_id", id)`), carrying its
/// scheduled send time so receivers measure latency from the schedule.
pub fn load_message(prefix: &str, k: u64, to: (&str, &str), sched_us: u64) -> Value {
    let mut v = serde_json::json!({"type": "send-message", "client_msg_id": format!("{prefix}{k}"),
        "content_type": "text", "content": {"text": "loadtest", "sched_us": sched_us}});
    v[to.0] = Value::String(to.1.to_owned());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_ranges() {
        let r = parse_ip_range("127.0.0.2-127.0.0.5").unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[3], Ipv4Addr::new(127, 0, 0, 5));
        assert_eq!(parse_ip_range("127.0.1.255-127.0.2.0").unwrap().len(), 2);
        assert_eq!(parse_ip_range("127.0.0.9").unwrap(), vec![Ipv4Addr::new(127, 0, 0, 9)]);
        assert!(parse_ip_range("127.0.0.5-127.0.0.2").is_err());
        assert!(parse_ip_range("nope").is_err());
    }
}
