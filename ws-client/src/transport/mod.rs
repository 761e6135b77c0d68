//! The client's socket behind a small seam: [`Transport::Tungstenite`] (tokio-tungstenite,
//! the default) or, built with the `sockudo` feature, [`Transport::Sockudo`] (sockudo-ws).
//!
//! The connection's task sees one [`Socket`] either way: a `Stream` of inbound frames and a
//! `Sink` of outbound ones, both as tungstenite's `Message` (the client's own vocabulary for
//! a frame), with the transport's errors as tungstenite's `Error`. Each backend file opens a
//! connection (TCP, TLS, upgrade) and, for sockudo-ws, translates frames at the seam. Under
//! either, the TCP stream is [`Clocked`]: the socket tells when it last read (see
//! [`Socket::last_read`]).
//! On a connection that agreed to `ws-toolkit.msgpack` the socket turns MessagePack frames
//! into the JSON the task reads and back (`msgpack.rs`); one that offered permessage-deflate
//! reads through an inflater that watches the server's answer (`inflating.rs`).
//! Files: this one (the choice, the TCP and TLS connection and the seam), `tungstenite.rs`,
//! `sockudo.rs`, `read_clock.rs`, `msgpack.rs`, `inflating.rs`, `tunnel.rs` (the TCP
//! connection through a proxy).

mod inflating;
mod msgpack;
mod read_clock;
#[cfg(feature = "sockudo")]
mod sockudo;
mod tungstenite;
mod tunnel;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::{Host, Url};
use ws_protocol::Encoding;

use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use self::inflating::Inflating;
use self::read_clock::{Clocked, ReadClock};
use crate::settings::Settings;

/// The TCP under either transport, its reads noted on a [`ReadClock`].
type Tcp = Clocked<TcpStream>;

/// The byte stream under either transport: TCP, TLS for `wss://`, and the inflater that
/// inflates what the server compressed once it agreed to permessage-deflate.
type ByteStream = Inflating<MaybeTlsStream<Tcp>>;

/// Which WebSocket implementation carries the client's connections
/// ([`ClientBuilder::transport`](crate::ClientBuilder::transport)).
///
/// tokio-tungstenite is the default. Built with the `sockudo` feature, the client can use
/// sockudo-ws instead ([`ClientBuilder::transport`](crate::ClientBuilder::transport) or
/// `WS_CLIENT_TRANSPORT=sockudo`): its frame reader is faster (see docs/BENCHMARKS.md, S12);
/// the client behaves the same on both. The feature alone changes nothing, so that another
/// crate turning it on does not change the transport of yours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Transport {
    /// tokio-tungstenite, the default.
    #[default]
    Tungstenite,
    /// sockudo-ws (with the `sockudo` feature).
    #[cfg(feature = "sockudo")]
    Sockudo,
}

impl Transport {
    /// Whether text read on this transport may be handed to the application without a copy:
    /// sockudo-ws reads into a fresh buffer when the last one is still shared; tokio-tungstenite
    /// would go on reading into what is left of it, in ever smaller pieces.
    pub(crate) fn shares_text(self) -> bool {
        match self {
            Self::Tungstenite => false,
            #[cfg(feature = "sockudo")]
            Self::Sockudo => true,
        }
    }

    /// The transport a configuration names, if this build has it.
    pub(crate) fn named(transport: ws_protocol::ClientTransport) -> Option<Self> {
        match transport {
            ws_protocol::ClientTransport::Tungstenite => Some(Self::Tungstenite),
            #[cfg(feature = "sockudo")]
            ws_protocol::ClientTransport::Sockudo => Some(Self::Sockudo),
            _ => None,
        }
    }
}

/// One open WebSocket, whichever transport carries it.
pub(crate) struct Socket {
    kind: Kind,
    clock: Arc<ReadClock>,
    /// What the upgrade agreed: the frames on the wire.
    encoding: Encoding,
}

/// The transport under a [`Socket`].
enum Kind {
    /// tokio-tungstenite.
    Tungstenite(Box<WebSocketStream<ByteStream>>),
    /// sockudo-ws.
    #[cfg(feature = "sockudo")]
    Sockudo(Box<sockudo::SockudoSocket>),
}

impl Socket {
    /// When the socket last read bytes: for the frame it just gave, when that frame arrived
    /// (see `read_clock.rs`).
    pub(crate) fn last_read(&self) -> Instant {
        self.clock.last_read()
    }
}

/// Opens a connection to `url` (TCP, TLS for `wss://`, the upgrade) on the transport the
/// settings name, within no time limit of its own (the caller has one).
pub(crate) async fn connect(settings: &Settings, url: &str) -> Result<Socket, String> {
    let clock = ReadClock::new();
    let kind = match settings.transport {
        Transport::Tungstenite => tungstenite::connect(settings, url, clock.clone())
            .await
            .map(|ws| Kind::Tungstenite(Box::new(ws)))?,
        #[cfg(feature = "sockudo")]
        Transport::Sockudo => sockudo::connect(settings, url, clock.clone())
            .await
            .map(|ws| Kind::Sockudo(Box::new(ws)))?,
    };
    Ok(Socket {
        kind,
        clock,
        encoding: settings.encoding,
    })
}

/// The `Sec-WebSocket-Protocol` an upgrade asks for: none for JSON (what every server
/// speaks), the subprotocol otherwise.
fn subprotocol(settings: &Settings) -> Option<&'static str> {
    match settings.encoding {
        Encoding::Json => None,
        encoding => Some(encoding.subprotocol()),
    }
}

/// Why an upgrade that asked for `asked` failed when the server answered with `answered`.
fn refused_subprotocol(asked: &str, answered: Option<&str>) -> String {
    match answered {
        None => format!(
            "the server did not agree to the {asked} subprotocol (MessagePack needs a ws-toolkit hub)"
        ),
        Some(other) => format!("asked for the {asked} subprotocol, the server answered {other:?}"),
    }
}

/// The TCP connection to `url`'s host and port, directly or through the proxy the settings
/// route it to (`tunnel.rs`); no Nagle: frames go out as they are written. Its reads are
/// noted on `clock`.
async fn open_tcp(settings: &Settings, url: &Url, clock: Arc<ReadClock>) -> Result<Tcp, String> {
    let host = url.host().ok_or_else(|| format!("no host in URL {url}"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("no port in URL {url}"))?;
    let tcp = match settings.proxy.for_url(url) {
        Some(proxy) => tunnel::open(proxy, &host, port).await?,
        None => match host {
            Host::Domain(name) => TcpStream::connect((name, port)).await,
            Host::Ipv4(ip) => TcpStream::connect((ip, port)).await,
            Host::Ipv6(ip) => TcpStream::connect((ip, port)).await,
        }
        .map_err(|e| e.to_string())?,
    };
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(Clocked::new(tcp, clock))
}

/// The byte stream to `url`: TCP (see [`open_tcp`]), TLS with the settings' roots if
/// `secure`, watched for permessage-deflate if the settings offer it.
async fn open_stream(
    settings: &Settings,
    url: &Url,
    secure: bool,
    clock: Arc<ReadClock>,
) -> Result<ByteStream, String> {
    let tcp = open_tcp(settings, url, clock).await?;
    let stream = if secure {
        let tls = settings
            .tls
            .clone()
            .ok_or_else(|| "no TLS configuration for a wss:// URL".to_owned())?;
        let name = match url.host() {
            Some(Host::Domain(name)) => ServerName::try_from(name.to_owned())
                .map_err(|e| format!("bad TLS server name {name:?}: {e}"))?,
            Some(Host::Ipv4(ip)) => ServerName::from(std::net::IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => ServerName::from(std::net::IpAddr::V6(ip)),
            None => return Err(format!("no host in URL {url}")),
        };
        let tls = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        MaybeTlsStream::Rustls(tls)
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    Ok(Inflating::new(
        stream,
        settings.compression,
        settings.max_message_size,
    ))
}

/// `url` parsed, if its scheme is `ws` or `wss`; and whether it is `wss`.
fn parse_url(url: &str) -> Result<(Url, bool), String> {
    let parsed = Url::parse(url).map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let secure = match parsed.scheme() {
        "ws" => false,
        "wss" => true,
        other => return Err(format!("unsupported URL scheme {other:?} (ws or wss)")),
    };
    Ok((parsed, secure))
}

/// The same call on whichever transport's socket this is.
macro_rules! on_socket {
    ($socket:expr, $ws:ident => $call:expr) => {
        match &mut $socket.get_mut().kind {
            Kind::Tungstenite($ws) => $call,
            #[cfg(feature = "sockudo")]
            Kind::Sockudo($ws) => $call,
        }
    };
}

impl Stream for Socket {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = on_socket!(self.as_mut(), ws => Pin::new(ws.as_mut()).poll_next(cx));
        match self.encoding {
            Encoding::Json => next,
            _ => next.map(|next| next.map(|frame| frame.map(msgpack::inbound))),
        }
    }
}

impl Sink<Message> for Socket {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        on_socket!(self, ws => Pin::new(ws.as_mut()).poll_ready(cx))
    }

    fn start_send(self: Pin<&mut Self>, frame: Message) -> Result<(), WsError> {
        let frame = match self.encoding {
            Encoding::Json => frame,
            _ => msgpack::outbound(frame),
        };
        on_socket!(self, ws => Pin::new(ws.as_mut()).start_send(frame))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        on_socket!(self, ws => Pin::new(ws.as_mut()).poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        on_socket!(self, ws => Pin::new(ws.as_mut()).poll_close(cx))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use super::*;
    use crate::WebSocketClient;

    /// What the echo server saw of the upgrade: the request target and the `x-token` header.
    type Seen = (String, Option<String>);

    /// A tokio-tungstenite server on 127.0.0.1:0 that echoes text and binary frames and
    /// answers a close; its URL, and what it saw of the upgrade.
    #[allow(clippy::result_large_err)] // tungstenite's callback type, not ours
    async fn echo_server() -> (String, oneshot::Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen) = oneshot::channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let callback = |request: &Request, response: Response| {
                let token = request
                    .headers()
                    .get("x-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let _ = seen_tx.send((request.uri().to_string(), token));
                Ok(response)
            };
            let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
                .await
                .unwrap();
            while let Some(Ok(frame)) = ws.next().await {
                // tungstenite answers pings and the close by itself, on the next read.
                if let Message::Text(_) | Message::Binary(_) = frame {
                    ws.send(frame).await.unwrap();
                }
            }
        });
        (format!("ws://{addr}/feed?depth=5"), seen)
    }

    async fn next(ws: &mut Socket) -> Message {
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the connection is open")
            .expect("a good frame")
    }

    /// Frames of every kind cross the seam both ways unchanged; the upgrade carries the
    /// path, the query and the application's headers.
    async fn frames_cross_the_seam(transport: Transport) {
        let (url, seen) = echo_server().await;
        let settings = WebSocketClient::builder()
            .url(&url)
            .header("x-token", "t0k3n")
            .transport(transport)
            .settings()
            .unwrap();
        let mut ws = connect(&settings, &url).await.unwrap();
        let (target, token) = seen.await.unwrap();
        assert_eq!(target, "/feed?depth=5");
        assert_eq!(token.as_deref(), Some("t0k3n"));

        ws.send(Message::text("héllo")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("héllo"));
        ws.send(Message::binary(vec![0u8, 255, 7])).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 255, 7]));
        ws.send(Message::Ping(vec![1u8, 2].into())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::Pong(vec![1u8, 2].into()));
        let goodbye = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        ws.send(Message::Close(Some(goodbye))).await.unwrap();
        match next(&mut ws).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected the server's close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_cross_the_tungstenite_seam() {
        frames_cross_the_seam(Transport::Tungstenite).await;
    }

    #[cfg(feature = "sockudo")]
    #[tokio::test]
    async fn frames_cross_the_sockudo_seam() {
        frames_cross_the_seam(Transport::Sockudo).await;
    }

    #[cfg(feature = "sockudo")]
    #[test]
    fn ws_client_transport_picks_sockudo() {
        let config =
            ws_protocol::WebSocketConfig::from_vars([("WS_CLIENT_TRANSPORT", "sockudo")]).unwrap();
        let settings = crate::ClientBuilder::from_config(&config)
            .url("ws://127.0.0.1:1")
            .settings()
            .unwrap();
        assert_eq!(settings.transport, Transport::Sockudo);
    }

    #[cfg(not(feature = "sockudo"))]
    #[test]
    fn ws_client_transport_sockudo_is_refused_without_the_feature() {
        let config =
            ws_protocol::WebSocketConfig::from_vars([("WS_CLIENT_TRANSPORT", "sockudo")]).unwrap();
        let error = crate::ClientBuilder::from_config(&config)
            .url("ws://127.0.0.1:1")
            .settings()
            .unwrap_err();
        assert!(error.to_string().contains("sockudo"), "{error}");
    }
}
