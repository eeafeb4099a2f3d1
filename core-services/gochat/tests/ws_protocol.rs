//! RFC 6455 behaviour of the gateway at the byte level: a raw TCP client
//! performs the upgrade and sends hand-built frames (fragmented, masked,
//! pipelined, malformed), then decodes what the server sends back.

mod support;

use gochat_wscodec::{client_frame, Message, MessageDecoder, OpCode, Role};
use serde_json::Value;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    decoder: MessageDecoder,
}

#[derive(Debug, PartialEq)]
enum Frame {
    Text(Value),
    Pong(Vec<u8>),
    Close(Option<u16>),
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

impl RawWs {
    /// Upgrade, sending `extra` in the same write as the request head.
    async fn open(srv: &Server, token: &str, extra: &[u8]) -> Self {
        Self::open_on(TcpStream::connect(srv.addr).await.unwrap(), token, extra).await
    }

    /// [`Self::open`] over a connected socket.
    async fn open_on(mut stream: TcpStream, token: &str, extra: &[u8]) -> Self {
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(extra);
        stream.write_all(&req).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "server closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        buf.drain(..end);
        Self { stream, buf, decoder: MessageDecoder::with_role(Role::Client, 16 << 20, 16 << 20) }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some(d) = self.decoder.decode(&mut self.buf).expect("server frames are valid") {
                let consumed = d.consumed;
                let frame = match d.message {
                    Some(Message::Text(t)) => Some(Frame::Text(serde_json::from_slice(t).unwrap())),
                    Some(Message::Pong(p)) => Some(Frame::Pong(p.to_vec())),
                    Some(Message::Close(c)) => Some(Frame::Close(c.map(|c| c.code))),
                    Some(other) => panic!("unexpected {other:?}"),
                    None => None,
                };
                self.buf.drain(..consumed);
                if let Some(f) = frame {
                    return f;
                }
                continue;
            }
            let mut chunk = vec![0u8; 64 << 10];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("timeout")
                .unwrap();
            assert!(n > 0, "server closed without a close frame");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// After a close frame the server ends the TCP connection.
    async fn expect_eof(&mut self) {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
            .await
            .expect("no EOF")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}

async fn metric_sum(srv: &Server, name: &str) -> f64 {
    srv.metric(name).await.iter().map(|(_, v)| v).sum()
}

fn text(payload: &[u8]) -> Vec<u8> {
    client_frame(OpCode::Text, true, payload, MASK)
}

#[tokio::test]
async fn frames_pipelined_fragmented_and_split_are_all_understood() {
    let srv = Server::start(&temp_dir("raw1"), 1);
    let (_, tok) = srv.user("raw").await;
    // a frame pipelined in the same packet as the upgrade request
    let mut ws = RawWs::open(&srv, &tok, &text(br#"{"type":"ping"}"#)).await;
    assert_eq!(ws.next().await, Frame::Text(serde_json::json!({"type":"pong"})));

    // a message in three fragments with a control frame interleaved
    let mut bytes = client_frame(OpCode::Text, false, br#"{"ty"#, MASK);
    bytes.extend(client_frame(OpCode::Ping, true, b"hb", MASK));
    bytes.extend(client_frame(OpCode::Continuation, false, br#"pe":"pi"#, MASK));
    bytes.extend(client_frame(OpCode::Continuation, true, br#"ng"}"#, MASK));
    ws.write(&bytes).await;
    assert_eq!(ws.next().await, Frame::Pong(b"hb".to_vec()));
    assert_eq!(ws.next().await, Frame::Text(serde_json::json!({"type":"pong"})));

    // a 300 KiB message (larger than the shard read buffer) dribbled in pieces
    let mut big = br#"{"type":"ping","pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 300 << 10));
    big.extend(br#""}"#);
    let frame = text(&big);
    for chunk in frame.chunks(7_919) {
        ws.write(chunk).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(ws.next().await, Frame::Text(serde_json::json!({"type":"pong"})));

    // client-initiated close is echoed, then the server hangs up
    let mut close = vec![0x03, 0xe8];
    close.extend(b"bye");
    ws.write(&client_frame(OpCode::Close, true, &close, MASK)).await;
    assert_eq!(ws.next().await, Frame::Close(Some(1000)));
    ws.expect_eof().await;
}

#[tokio::test]
async fn protocol_violations_close_with_the_rfc_codes() {
    let srv = Server::start(&temp_dir("raw2"), 1);
    let (_, tok) = srv.user("rawbad").await;

    // invalid UTF-8 in a text frame -> 1007
    let mut ws = RawWs::open(&srv, &tok, &[]).await;
    ws.write(&text(&[b'{', 0xff, 0xfe, b'}'])).await;
    assert_eq!(ws.next().await, Frame::Close(Some(1007)));
    ws.expect_eof().await;

    // invalid UTF-8 split across fragments -> 1007
    let mut ws = RawWs::open(&srv, &tok, &[]).await;
    let mut bytes = client_frame(OpCode::Text, false, b"ok", MASK);
    bytes.extend(client_frame(OpCode::Continuation, true, &[0xc3, 0x28], MASK));
    ws.write(&bytes).await;
    assert_eq!(ws.next().await, Frame::Close(Some(1007)));

    // an unmasked client frame -> 1002
    let mut ws = RawWs::open(&srv, &tok, &[]).await;
    ws.write(&[0x81, 0x02, b'h', b'i']).await;
    assert_eq!(ws.next().await, Frame::Close(Some(1002)));

    // a continuation with nothing to continue -> 1002
    let mut ws = RawWs::open(&srv, &tok, &[]).await;
    ws.write(&client_frame(OpCode::Continuation, true, b"x", MASK)).await;
    assert_eq!(ws.next().await, Frame::Close(Some(1002)));

    // a binary frame -> 1003 (protocol v1 is JSON text)
    let mut ws = RawWs::open(&srv, &tok, &[]).await;
    ws.write(&client_frame(OpCode::Binary, true, b"\x00\x01", MASK)).await;
    assert_eq!(ws.next().await, Frame::Close(Some(1003)));

    // a frame header announcing more than max_frame_bytes -> 1009 before the payload arrives
    let mut ws = RawWs::open(&srv, &tok, &[]).await;
    let mut hdr = vec![0x81, 0xff];
    hdr.extend((64u64 << 20).to_be_bytes());
    hdr.extend(MASK);
    ws.write(&hdr).await;
    assert_eq!(ws.next().await, Frame::Close(Some(1009)));

    let errors = srv.metric("gochat_gateway_protocol_errors_total").await;
    assert_eq!(errors.iter().map(|(_, v)| v).sum::<f64>(), 6.0);
    // the server is fine
    let mut ws = RawWs::open(&srv, &tok, &text(br#"{"type":"ping"}"#)).await;
    assert_eq!(ws.next().await, Frame::Text(serde_json::json!({"type":"pong"})));
}

/// Every byte sent refreshes a connection's idleness, so a client could
/// hold a frame open forever by trickling it. A started message must be
/// complete within gateway.frame_timeout_secs (2 s here): the trickler is
/// closed with 1008 `frame timeout` while its bytes keep coming, and a
/// connection sending whole messages meanwhile is untouched.
#[tokio::test]
async fn a_frame_trickled_byte_by_byte_is_closed_at_the_frame_deadline() {
    let srv = Server::start_with(&temp_dir("trickle"), 1, &[("GOCHAT_GATEWAY__FRAME_TIMEOUT_SECS", "2")]);
    let (_, tok) = srv.user("trickler").await;
    let ws = RawWs::open(&srv, &tok, &[]).await;
    let mut steady = RawWs::open(&srv, &tok, &[]).await;
    let frame = text(&[b' '; 120]); // a 126-byte frame, never finished below
    let (mut rd, mut wr) = ws.stream.into_split();
    let trickle = tokio::spawn(async move {
        for b in &frame[..frame.len() - 1] {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = std::time::Instant::now();
    // Meanwhile a well-behaved connection is served.
    tokio::time::sleep(Duration::from_secs(1)).await;
    steady.write(&text(br#"{"type":"ping"}"#)).await;
    assert_eq!(steady.next().await, Frame::Text(serde_json::json!({"type":"pong"})));
    let mut got = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the trickled frame was still open after {:?}", started.elapsed()),
        }
    }
    let took = started.elapsed();
    trickle.abort();
    let mut decoder = MessageDecoder::with_role(Role::Client, 1 << 16, 1 << 16);
    let close = decoder.decode(&mut got).expect("a valid frame").expect("a close frame");
    match close.message {
        Some(Message::Close(Some(c))) => {
            assert_eq!(c.code, 1008);
            assert_eq!(c.reason, "frame timeout");
        }
        other => panic!("expected a 1008 close, got {other:?}"),
    }
    // The shard clock counts whole seconds: the deadline is 2 s, give or take one.
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(8), "closed after {took:?}");
    steady.write(&text(br#"{"type":"ping"}"#)).await;
    assert_eq!(steady.next().await, Frame::Text(serde_json::json!({"type":"pong"})));
    assert_eq!(metric_sum(&srv, "gochat_gateway_frame_timeouts_total").await, 1.0);
}

/// One source address may hold gateway.max_connections_per_ip sockets (3
/// here, one shard): the fourth is answered 429 `too_many_connections` and
/// closed; another address is unaffected; a closed socket frees its place.
/// (The capped sockets come from 127.0.0.3: the test's HTTP client keeps
/// its own connection from 127.0.0.1.)
#[tokio::test]
async fn connections_per_source_address_are_capped() {
    let srv = Server::start_with(&temp_dir("perip"), 1, &[("GOCHAT_GATEWAY__MAX_CONNECTIONS_PER_IP", "3")]);
    let (_, tok) = srv.user("perip").await;
    let from = |ip: &str| {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        s
    };
    let ws_from = |ip: &'static str| {
        let (tok, socket) = (tok.clone(), from(ip));
        async move { RawWs::open_on(socket.connect(srv.addr).await.unwrap(), &tok, &[]).await }
    };
    async fn status(s: &mut TcpStream) -> String {
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("an answer").unwrap();
        String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned()
    }
    let mut ws = vec![ws_from("127.0.0.3").await, ws_from("127.0.0.3").await];
    let mut idle_http = from("127.0.0.3").connect(srv.addr).await.unwrap();
    let mut fourth = from("127.0.0.3").connect(srv.addr).await.unwrap();
    fourth.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(status(&mut fourth).await, "HTTP/1.1 429 Too Many Requests");
    let mut other = from("127.0.0.2").connect(srv.addr).await.unwrap();
    other.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(status(&mut other).await, "HTTP/1.1 200 OK", "another address has its own share");
    // A WebSocket closing frees its place.
    let mut closing = ws.pop().unwrap();
    closing.write(&client_frame(OpCode::Close, true, &[0x03, 0xe8], MASK)).await;
    assert_eq!(closing.next().await, Frame::Close(Some(1000)));
    closing.expect_eof().await;
    let mut again = None;
    for _ in 0..50 {
        let mut s = from("127.0.0.3").connect(srv.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let line = status(&mut s).await;
        if line == "HTTP/1.1 200 OK" {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the freed place was never given back");
    idle_http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(status(&mut idle_http).await, "HTTP/1.1 200 OK", "sockets within the cap are served");
    assert!(metric_sum(&srv, "gochat_gateway_refused_per_ip_total").await >= 1.0);
}
