//! A TCP connection to the server through a proxy: HTTP `CONNECT` (async-http-proxy, with
//! basic auth from the proxy URL) or SOCKS5 (tokio-socks, with username and password). What
//! comes back is the proxy's socket, now a tunnel to the server: TLS for `wss://` and the
//! upgrade run through it end to end, so the server's certificate is checked as without a
//! proxy. At most [`MAX_PROXY_ANSWER`] bytes of the proxy's answer are read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_socks::TargetAddr;
use tokio_socks::tcp::Socks5Stream;
use url::Host;

use crate::proxy::{Proxy, ProxyKind};

/// The most read from a proxy before the tunnel is open (an HTTP proxy's answer to
/// `CONNECT`; a SOCKS5 exchange is a few hundred bytes at most).
pub(super) const MAX_PROXY_ANSWER: usize = 16 * 1024;

/// Opens a tunnel through `proxy` to `host`:`port`; the error says which step failed.
pub(super) async fn open(proxy: &Proxy, host: &Host<&str>, port: u16) -> Result<TcpStream, String> {
    let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| format!("proxy {proxy}: {e}"))?;
    let target = match host {
        Host::Domain(name) => format!("{name}:{port}"),
        Host::Ipv4(ip) => format!("{ip}:{port}"),
        Host::Ipv6(ip) => format!("[{ip}]:{port}"),
    };
    match proxy.kind {
        ProxyKind::HttpConnect => {
            let name = match host {
                Host::Ipv6(ip) => format!("[{ip}]"),
                other => other.to_string(),
            };
            let mut capped = Capped::new(&mut tcp, MAX_PROXY_ANSWER);
            let connected = match &proxy.credentials {
                Some((user, password)) => {
                    async_http_proxy::http_connect_tokio_with_basic_auth(
                        &mut capped,
                        &name,
                        port,
                        user,
                        password,
                    )
                    .await
                }
                None => async_http_proxy::http_connect_tokio(&mut capped, &name, port).await,
            };
            connected.map_err(|e| http_refusal(proxy, &target, &e))?;
            Ok(tcp)
        }
        ProxyKind::Socks5 { remote_dns } => {
            let address = match host {
                Host::Domain(name) if remote_dns => TargetAddr::Domain((*name).into(), port),
                Host::Domain(name) => {
                    let resolved = tokio::net::lookup_host((*name, port))
                        .await
                        .map_err(|e| format!("resolving {name} (for socks5://): {e}"))?
                        .next()
                        .ok_or_else(|| format!("{name} has no address (for socks5://)"))?;
                    TargetAddr::Ip(resolved)
                }
                Host::Ipv4(ip) => TargetAddr::Ip((*ip, port).into()),
                Host::Ipv6(ip) => TargetAddr::Ip((*ip, port).into()),
            };
            let tunnel = match &proxy.credentials {
                Some((user, password)) => {
                    Socks5Stream::connect_with_password_and_socket(tcp, address, user, password)
                        .await
                }
                None => Socks5Stream::connect_with_socket(tcp, address).await,
            };
            tunnel
                .map(Socks5Stream::into_inner)
                .map_err(|e| socks_refusal(proxy, &target, &e))
        }
    }
}

/// What an HTTP proxy's failure means, in words.
fn http_refusal(proxy: &Proxy, target: &str, error: &async_http_proxy::HttpError) -> String {
    use async_http_proxy::HttpError;
    match error {
        // 407 Proxy Authentication Required; some proxies (tinyproxy) answer 401.
        HttpError::HttpCode200(code @ (401 | 407)) if proxy.credentials.is_some() => format!(
            "the HTTP proxy {proxy} refused the user name and password in the proxy URL \
             ({code})"
        ),
        HttpError::HttpCode200(code @ (401 | 407)) => format!(
            "the HTTP proxy {proxy} needs a user name and password ({code}): give them in the \
             proxy URL, http://user:password@host:port"
        ),
        HttpError::HttpCode200(code) => {
            format!("the HTTP proxy {proxy} answered {code} to CONNECT {target}")
        }
        HttpError::EndOfFile => {
            format!(
                "the HTTP proxy {proxy} closed the connection before answering CONNECT {target}"
            )
        }
        HttpError::MaximumResponseHeaderLengthExceeded(_) => {
            format!("the HTTP proxy {proxy}'s answer to CONNECT is too long")
        }
        other => format!("HTTP proxy {proxy}: {other}"),
    }
}

/// What a SOCKS5 proxy's failure means, in words.
fn socks_refusal(proxy: &Proxy, target: &str, error: &tokio_socks::Error) -> String {
    use tokio_socks::Error;
    match error {
        Error::PasswordAuthFailure(_) => {
            format!("the SOCKS5 proxy {proxy} refused the user name and password in the proxy URL")
        }
        Error::NoAcceptableAuthMethods if proxy.credentials.is_none() => format!(
            "the SOCKS5 proxy {proxy} needs a user name and password: give them in the proxy \
             URL, socks5://user:password@host:port"
        ),
        Error::ConnectionRefused => {
            format!("the SOCKS5 proxy {proxy} could not connect to {target}: connection refused")
        }
        Error::ConnectionNotAllowedByRuleset => {
            format!("the SOCKS5 proxy {proxy} does not allow connecting to {target}")
        }
        Error::HostUnreachable | Error::NetworkUnreachable | Error::TtlExpired => {
            format!("the SOCKS5 proxy {proxy} could not reach {target}: {error}")
        }
        other => format!("SOCKS5 proxy {proxy}: {other}"),
    }
}

/// A stream that reads at most a budget of bytes, then fails its reads: the proxy's answer
/// cannot grow without bound (async-http-proxy checks its length only at each line's end).
struct Capped<'a, S> {
    inner: &'a mut S,
    left: usize,
}

impl<'a, S> Capped<'a, S> {
    fn new(inner: &'a mut S, budget: usize) -> Self {
        Self {
            inner,
            left: budget,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the proxy's answer is longer than {MAX_PROXY_ANSWER} bytes"),
            )));
        }
        // Through a small buffer of its own, so that no read goes past the budget.
        let mut scratch = [0u8; 1024];
        let room = self.left.min(buf.remaining()).min(scratch.len());
        let mut limited = ReadBuf::new(&mut scratch[..room]);
        std::task::ready!(Pin::new(&mut *self.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.put_slice(limited.filled());
        self.left -= n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
