//! [`ReadClock`] and [`Clocked`]: when a connection last read bytes from its socket, noted
//! once per read (one `recv` often brings many frames) rather than once per frame.
//!
//! A frame is complete when the read that brought its last bytes returns, and a transport
//! hands out the frames already in its buffer before it reads again: so the latest read's
//! instant, looked up when a frame comes out of the transport, is when that frame arrived.
//! A frame that waited in the buffer behind others is stamped with the read that brought it,
//! so its wait counts as time spent in the client, as it is.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The instant of a connection's latest read, shared by its socket wrapper (which notes it)
/// and the connection's task (which stamps frames with it).
#[derive(Debug)]
pub(crate) struct ReadClock {
    /// When the clock was made; reads are noted as nanoseconds since.
    base: Instant,
    since_base: AtomicU64,
}

impl ReadClock {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            since_base: AtomicU64::new(0),
        })
    }

    /// Notes that bytes were read now.
    fn note(&self) {
        let since = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // One connection's task reads and looks it up: no ordering with other memory needed.
        self.since_base.store(since, Ordering::Relaxed);
    }

    /// When bytes were last read (when the clock was made, before the first read).
    pub(crate) fn last_read(&self) -> Instant {
        self.base + Duration::from_nanos(self.since_base.load(Ordering::Relaxed))
    }
}

/// A byte stream that notes on its [`ReadClock`] every read that brought bytes.
#[derive(Debug)]
pub(crate) struct Clocked<S> {
    inner: S,
    clock: Arc<ReadClock>,
}

impl<S> Clocked<S> {
    pub(crate) fn new(inner: S, clock: Arc<ReadClock>) -> Self {
        Self { inner, clock }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Clocked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.note();
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Clocked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_read_that_brings_bytes_moves_the_clock_and_nothing_else_does() {
        let clock = ReadClock::new();
        let made = clock.last_read();
        let (near, mut far) = tokio::io::duplex(64);
        let mut clocked = Clocked::new(near, clock.clone());

        tokio::time::advance(Duration::from_millis(5)).await;
        clocked.write_all(b"out").await.unwrap();
        assert_eq!(clock.last_read(), made, "a write is not a read");

        far.write_all(b"in").await.unwrap();
        let mut got = [0u8; 8];
        let n = clocked.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"in");
        assert_eq!(clock.last_read(), made + Duration::from_millis(5));

        tokio::time::advance(Duration::from_millis(7)).await;
        drop(far);
        assert_eq!(clocked.read(&mut got).await.unwrap(), 0);
        assert_eq!(
            clock.last_read(),
            made + Duration::from_millis(5),
            "the end of the stream brings no bytes"
        );
    }
}
