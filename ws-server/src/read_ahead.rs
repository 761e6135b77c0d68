//! [`ReadAhead`]: reads the socket in large chunks while holding no buffer when idle.
//!
//! tungstenite keeps a read buffer per connection, allocated up front and never shrunk, and
//! reads at most that much per system call. A large buffer costs every idle connection its
//! size; a small one costs a publisher a system call per few frames. This reader gives both:
//! tungstenite's own buffer is small, and each read from the socket goes into one scratch
//! buffer per thread, large enough for a burst of frames. What tungstenite does not take at
//! once is kept in a per-connection buffer of exactly that size, which is freed as soon as
//! it has been read, so an idle connection holds nothing here.
//!
//! On a connection that agreed to permessage-deflate, every read also goes through an
//! [`Inflater`] (see [`ReadAhead::inflate`]): tungstenite, which knows no extensions, then
//! reads compressed messages inflated.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use ws_protocol::deflate::Inflater;

/// The most read from the socket in one system call.
const SCRATCH_SIZE: usize = 16 * 1024;

thread_local! {
    /// One scratch buffer per runtime thread; borrowed only within one `poll_read`.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// A stream whose reads go through a shared scratch buffer. Writes pass through.
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Bytes read from the socket and not yet handed out; empty (no allocation) when idle.
    pending: Vec<u8>,
    /// Where the unread part of `pending` starts.
    start: usize,
    /// The inflater every read goes through, once the connection agreed to compression.
    inflater: Option<Box<Inflater>>,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            start: 0,
            inflater: None,
        }
    }

    /// From now on, reads go through `inflater`: compressed messages are handed out inflated
    /// (bytes already buffered, read with the upgrade, go through it first). An error of the
    /// inflater is a read error carrying an [`InflateError`](ws_protocol::deflate::InflateError);
    /// after it, reads hand out the socket's bytes as they come, for the close.
    pub(crate) fn inflate(&mut self, mut inflater: Inflater) {
        let buffered = std::mem::take(&mut self.pending);
        let start = std::mem::replace(&mut self.start, 0);
        match inflater.feed(&buffered[start..], &mut self.pending) {
            Ok(()) => self.inflater = Some(Box::new(inflater)),
            // A compressed frame before the upgrade's answer: the peer could not know. Its
            // bytes go to tungstenite as they are, which refuses them.
            Err(_) => self.pending = buffered[start..].to_vec(),
        }
    }

    /// A read through the inflater: what it makes of the next bytes of the socket.
    fn poll_read_inflated(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>>
    where
        S: AsyncRead + Unpin,
    {
        loop {
            if self.start < self.pending.len() {
                self.take_pending(buf);
                return Poll::Ready(Ok(()));
            }
            let Some(inflater) = self.inflater.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let fed = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut chunk = ReadBuf::new(&mut scratch[..]);
                match Pin::new(&mut self.inner).poll_read(cx, &mut chunk) {
                    Poll::Ready(Ok(())) if chunk.filled().is_empty() => Poll::Ready(Ok(false)),
                    Poll::Ready(Ok(())) => Poll::Ready(
                        inflater
                            .feed(chunk.filled(), &mut self.pending)
                            .map(|()| true)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
                    ),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            });
            match fed {
                Poll::Pending => return Poll::Pending,
                // The end of the stream.
                Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                // Something to hand out, or only compressed bytes gathered: read on.
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Err(e)) => {
                    let refused = e
                        .get_ref()
                        .is_some_and(|inner| inner.is::<ws_protocol::deflate::InflateError>());
                    if refused {
                        self.inflater = None;
                        self.pending = Vec::new();
                        self.start = 0;
                    }
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    /// Reads until the buffered bytes hold the end of an HTTP request head (an empty line),
    /// at least `max` bytes, or the end of the stream, and returns them. They stay buffered:
    /// the next reads hand them out again, so the upgrade is read as if nothing had looked.
    pub(crate) async fn peek_head(&mut self, max: usize) -> io::Result<&[u8]>
    where
        S: AsyncRead + Unpin,
    {
        loop {
            let buffered = &self.pending[self.start..];
            if buffered.len() >= max || buffered.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            self.pending.reserve(1024);
            if self.inner.read_buf(&mut self.pending).await? == 0 {
                break;
            }
        }
        Ok(&self.pending[self.start..])
    }

    /// Hands out what is pending, freeing the buffer once it is all read.
    fn take_pending(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.pending.len() - self.start).min(buf.remaining());
        buf.put_slice(&self.pending[self.start..self.start + n]);
        self.start += n;
        if self.start == self.pending.len() {
            self.pending = Vec::new();
            self.start = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.inflater.is_some() {
            return this.poll_read_inflated(cx, buf);
        }
        if this.start < this.pending.len() {
            this.take_pending(buf);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SCRATCH_SIZE {
            // Asked for as much as the scratch holds: read straight into the caller's buffer.
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut chunk = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(())) => {
                    let read = chunk.filled();
                    let n = read.len().min(buf.remaining());
                    buf.put_slice(&read[..n]);
                    if n < read.len() {
                        this.pending = read[n..].to_vec();
                        this.start = 0;
                    }
                    Poll::Ready(Ok(()))
                }
                other => other,
            }
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_and_nothing_is_held_afterwards() {
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&sent).await.unwrap();
        drop(writer);
        let mut reader = ReadAhead::new(reader);
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let n = reader.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(reader.pending.capacity(), 0, "the leftover buffer is freed");
    }
}
