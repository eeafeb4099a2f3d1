//! TLS on the client listener (rustls, `ring` provider), driven sans-IO over
//! the shard's glommio socket: ciphertext goes in with `read_tls` /
//! `process_new_packets`, plaintext comes out of `reader()`, and the other
//! way round through `writer()` / `write_tls`. No tokio adapter.
//!
//! [`Stream`] is what the HTTP handshake and the WebSocket loops read and
//! write through: a plaintext socket stays exactly a `TcpStream` (the TLS
//! state is boxed, so it does not enlarge idle plaintext connections).
//!
//! The certificate is shared by every shard through a [`TlsReloader`]: a
//! reload (SIGHUP) builds a new `ServerConfig` and bumps a generation counter;
//! each shard compares that counter with its cached copy on accept (one
//! atomic load) and only takes the reloader's mutex when it changed. Open
//! connections keep the configuration they were accepted with.
//!
//! Memory of an idle TLS connection, on top of the plaintext one: the boxed
//! `rustls::ServerConnection` (see `idle_tls_state` below for its size) and
//! rustls' receive buffer, which rustls shrinks to 4 KiB while the peer is
//! silent. Send and plaintext buffers are freed once drained.

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("no certificate in {0}")]
    NoCertificate(PathBuf),
    #[error("bad certificate pem in {path}: {reason}")]
    CertPem { path: PathBuf, reason: String },
    #[error("no usable private key in {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("certificate and key refused: {0}")]
    Config(#[from] rustls::Error),
}

/// Build a server configuration from PEM files: the certificate chain (leaf
/// first) and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source });
    let cert_pem = read(cert_path)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::CertPem { path: cert_path.to_owned(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_path)?)
        .map_err(|e| TlsError::Key { path: key_path.to_owned(), reason: e.to_string() })?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // One listener speaks HTTP/1.1 (REST and the WebSocket upgrade).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The current server configuration of a gateway, reloadable from its files.
pub struct TlsReloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    generation: AtomicU64,
    current: Mutex<Arc<ServerConfig>>,
}

impl TlsReloader {
    /// Load the certificate and key; fails when either is unusable.
    pub fn load(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Result<Arc<Self>, TlsError> {
        let (cert_path, key_path) = (cert_path.into(), key_path.into());
        let config = server_config(&cert_path, &key_path)?;
        Ok(Arc::new(Self { cert_path, key_path, generation: AtomicU64::new(1), current: Mutex::new(config) }))
    }

    /// Re-read the files. On success new handshakes use the new certificate;
    /// on failure the old one stays in use and the error is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert_path, &self.key_path)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = config;
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Reloads so far (1 = the initial load).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> (u64, Arc<ServerConfig>) {
        // Generation read first: a reload racing with us is picked up next time.
        let generation = self.generation();
        (generation, self.current.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A shard's view of the [`TlsReloader`]: the configuration it accepts with,
/// refreshed only when the generation moved.
pub struct ShardTls {
    shared: Arc<TlsReloader>,
    cached: RefCell<(u64, Arc<ServerConfig>)>,
    pub handshake_timeout: Duration,
}

impl ShardTls {
    pub fn new(shared: Arc<TlsReloader>, handshake_timeout: Duration) -> Self {
        let cached = RefCell::new(shared.snapshot());
        Self { shared, cached, handshake_timeout }
    }

    fn config(&self) -> Arc<ServerConfig> {
        if self.shared.generation() != self.cached.borrow().0 {
            *self.cached.borrow_mut() = self.shared.snapshot();
        }
        self.cached.borrow().1.clone()
    }

    /// Run the server side of a TLS handshake on `tcp` within the handshake timeout.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Stream> {
        let tls = ServerConnection::new(self.config()).map_err(io::Error::other)?;
        let mut stream = TlsStream { tcp, tls };
        let handshake = std::future::poll_fn(|cx| stream.poll_handshake(cx));
        let done = futures_lite::future::or(async { Some(handshake.await) }, async {
            glommio::timer::sleep(self.handshake_timeout).await;
            None
        })
        .await;
        match done {
            Some(Ok(())) => Ok(Stream::Tls(Box::new(stream))),
            Some(Err(e)) => Err(e),
            None => Err(io::Error::new(io::ErrorKind::TimedOut, "tls handshake timed out")),
        }
    }
}

/// A client socket: plaintext, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.tcp,
        }
    }

    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp().peer_addr().map_err(io::Error::from)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nodelay(on).map_err(io::Error::from)
    }

    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(d).map_err(io::Error::from)
    }

    /// The raw socket, for plaintext only (TLS bytes must go through rustls).
    pub fn plain_fd(&self) -> Option<RawFd> {
        match self {
            Stream::Plain(s) => Some(s.as_raw_fd()),
            Stream::Tls(_) => None,
        }
    }

    /// Write all of `data` and flush it to the socket (TLS: encrypted and sent).
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        use futures_lite::AsyncWriteExt;
        self.write_all(data).await?;
        self.flush().await
    }

    /// TLS only: hand up to `data.len()` plaintext bytes to rustls without
    /// touching the socket; returns how many it took (0 when its send buffer
    /// is full: flush first). Plaintext streams take nothing.
    pub fn buffer_plain(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(_) => Ok(0),
            Stream::Tls(t) => t.tls.writer().write(data),
        }
    }

    /// Stop writing: TLS sends close_notify first; then the socket's write half is shut.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown(std::net::Shutdown::Write).await.map_err(io::Error::from),
            Stream::Tls(t) => {
                t.tls.send_close_notify();
                std::future::poll_fn(|cx| t.poll_write_tls(cx)).await?;
                t.tcp.shutdown(std::net::Shutdown::Write).await.map_err(io::Error::from)
            }
        }
    }
}

/// A glommio socket seen as blocking `io::Read`/`io::Write` that answers
/// `WouldBlock` when glommio would park (the waker is registered then).
struct SyncIo<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A server-side TLS session over a glommio socket.
pub struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
}

impl TlsStream {
    /// Send whatever ciphertext rustls has queued; Ready once it is all written.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut SyncIo { tcp: &mut self.tcp, cx }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Read one more chunk of ciphertext and process it. Ready(Ok(false)) at EOF.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        match self.tls.read_tls(&mut SyncIo { tcp: &mut self.tcp, cx }) {
            Ok(0) => Poll::Ready(Ok(false)),
            Ok(_) => match self.tls.process_new_packets() {
                Ok(_) => Poll::Ready(Ok(true)),
                Err(e) => {
                    // Tell the peer why (the alert rustls queued), best effort.
                    let _ = self.tls.write_tls(&mut SyncIo { tcp: &mut self.tcp, cx });
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)))
                }
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.tls.wants_write() {
                std::task::ready!(self.poll_write_tls(cx))?;
            }
            if !self.tls.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(self.poll_read_tls(cx))? {
                true => {}
                false => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let t = match self.get_mut() {
            Stream::Plain(s) => return Pin::new(s).poll_read(cx, buf),
            Stream::Tls(t) => t,
        };
        loop {
            match t.tls.reader().read(buf) {
                // Ok(0): the peer's close_notify.
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Answers rustls owes the peer (key updates, alerts) go out first.
            if t.tls.wants_write() {
                if let Poll::Ready(Err(e)) = t.poll_write_tls(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            match std::task::ready!(t.poll_read_tls(cx))? {
                true => {}
                false => return Poll::Ready(Ok(0)),
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let t = match self.get_mut() {
            Stream::Plain(s) => return Pin::new(s).poll_write(cx, buf),
            Stream::Tls(t) => t,
        };
        loop {
            let n = t.tls.writer().write(buf)?;
            let flushed = t.poll_write_tls(cx);
            if n > 0 || buf.is_empty() {
                if let Poll::Ready(Err(e)) = flushed {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(n));
            }
            // rustls' send buffer was full: wait until some of it is written.
            std::task::ready!(flushed)?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(t) => t.poll_write_tls(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(t) => {
                std::task::ready!(t.poll_write_tls(cx))?;
                Pin::new(&mut t.tcp).poll_close(cx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn reload_keeps_the_old_config_on_a_bad_file() {
        let dir = std::env::temp_dir().join(format!("gochat-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = write_pair(&dir, "unit-a");
        let r = TlsReloader::load(&c, &k).unwrap();
        assert_eq!(r.generation(), 1);
        std::fs::write(&c, "not a certificate").unwrap();
        let e = r.reload().unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate(_)), "{e}");
        assert_eq!(r.generation(), 1, "a failed reload changes nothing");
        let (c2, k2) = write_pair(&dir, "unit-b");
        std::fs::rename(c2, &c).unwrap();
        // Key of pair a with certificate of pair b: refused.
        assert!(r.reload().is_err());
        std::fs::rename(k2, &k).unwrap();
        r.reload().unwrap();
        assert_eq!(r.generation(), 2);
        assert!(TlsReloader::load(dir.join("missing.crt"), &k).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What TLS adds to an idle connection beyond rustls' 4 KiB receive buffer.
    #[test]
    fn idle_tls_state() {
        let conn = std::mem::size_of::<ServerConnection>();
        let stream = std::mem::size_of::<Stream>();
        eprintln!("ServerConnection {conn} B (boxed), Stream {stream} B");
        assert!(stream <= std::mem::size_of::<TcpStream>() + 8, "the TLS state is boxed");
    }
}
