//! [`ReadAhead`]: reads the socket in large chunks while holding no buffer when idle.
//!
//! tungstenite keeps a read buffer per connection, allocated up front and never shrunk, and
//! reads at most that much per system call. A large buffer costs every idle connection its
//! size; a small one costs a publisher a system call per few frames. This reader gives both:
//! tungstenite's own buffer is small, and each read from the socket goes into one scratch
//! buffer per thread, large enough for a burst of frames. What tungstenite does not take at
//! once is kept in a per-connection buffer of exactly that size, which is freed as soon as
//! it has been read, so an idle connection holds nothing here.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

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
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            start: 0,
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
