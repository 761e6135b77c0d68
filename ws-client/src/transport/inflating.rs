//! [`Inflating`]: the byte stream under the client's WebSocket when it offers
//! permessage-deflate. It reads the server's answer to the upgrade as it passes: if the
//! server agreed, every byte after the answer goes through an [`Inflater`], so that the
//! transport (which knows no extensions) reads compressed messages inflated, each capped at
//! the client's maximum message size. It decides from the answer itself, so that compressed
//! frames arriving in the same read as the answer are inflated too.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ws_protocol::deflate::{Answer, FramesFrom, InflateError, Inflater, read_answer};

/// The most of the server's answer kept to read its extensions; a longer answer passes
/// unread (the transport refuses answers that long anyway).
const MAX_HEAD: usize = 16 * 1024;

/// What one read from the socket takes at most, on an inflating connection.
const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    /// One scratch buffer per thread for inflating reads; borrowed only within a read.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Where the stream is.
enum Mode {
    /// Compression not offered, or not agreed: bytes pass as they come.
    Passing,
    /// Offered: reading the server's answer (kept here until its end).
    Answer(Vec<u8>),
    /// Agreed: every byte goes through the inflater.
    Inflating(Box<Inflater>),
}

/// A stream that inflates what the server compressed, once it agreed (see the module docs).
pub(crate) struct Inflating<S> {
    inner: S,
    mode: Mode,
    /// The limit of one inflated message.
    limit: usize,
    /// Bytes made by the inflater and not yet handed out.
    pending: Vec<u8>,
    start: usize,
}

impl<S> Inflating<S> {
    /// `inner` as it is if `offered` is false; otherwise watching the upgrade's answer.
    pub(crate) fn new(inner: S, offered: bool, limit: usize) -> Self {
        Self {
            inner,
            mode: if offered {
                Mode::Answer(Vec::new())
            } else {
                Mode::Passing
            },
            limit,
            pending: Vec::new(),
            start: 0,
        }
    }

    fn take_pending(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.pending.len() - self.start).min(buf.remaining());
        buf.put_slice(&self.pending[self.start..self.start + n]);
        self.start += n;
        if self.start == self.pending.len() {
            self.pending = Vec::new();
            self.start = 0;
        }
    }

    /// The answer's head is complete in `head[..end]`: decide, and put what followed it
    /// (`rest`) through the inflater if the server agreed.
    fn decide(&mut self, head: &[u8], rest: &[u8]) -> io::Result<()> {
        let text = String::from_utf8_lossy(head);
        let answers: Vec<&str> = text
            .lines()
            .filter_map(|line| line.split_once(':'))
            .filter(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, value)| value.trim())
            .collect();
        let answer = (!answers.is_empty()).then(|| answers.join(", "));
        match read_answer(answer.as_deref()) {
            Answer::Deflate { context_takeover } => {
                let mut inflater = if context_takeover {
                    Inflater::with_context_takeover(self.limit)
                } else {
                    Inflater::new(FramesFrom::Server, self.limit)
                };
                inflater
                    .feed(rest, &mut self.pending)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                self.mode = Mode::Inflating(Box::new(inflater));
            }
            Answer::Uncompressed => {
                self.pending.extend_from_slice(rest);
                self.mode = Mode::Passing;
            }
            Answer::Invalid => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the server answered Sec-WebSocket-Extensions {:?}, which is not what the client offered",
                        answer.unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.start < this.pending.len() {
                this.take_pending(buf);
                return Poll::Ready(Ok(()));
            }
            match &mut this.mode {
                Mode::Passing => return Pin::new(&mut this.inner).poll_read(cx, buf),
                Mode::Answer(head) => {
                    // Read into the caller's buffer; the bytes of the answer stay there, what
                    // follows its end is taken back and decided on.
                    let before = buf.filled().len();
                    match Pin::new(&mut this.inner).poll_read(cx, buf) {
                        Poll::Ready(Ok(())) => {}
                        other => return other,
                    }
                    let read = &buf.filled()[before..];
                    if read.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    let searched_from = head.len().saturating_sub(3);
                    head.extend_from_slice(read);
                    let end = head[searched_from..]
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|at| searched_from + at + 4);
                    match end {
                        Some(end) => {
                            let head = std::mem::take(head);
                            let after = head.len() - end;
                            buf.set_filled(buf.filled().len() - after);
                            this.decide(&head[..end], &head[end..])?;
                            return Poll::Ready(Ok(()));
                        }
                        None if head.len() > MAX_HEAD => {
                            this.mode = Mode::Passing;
                            return Poll::Ready(Ok(()));
                        }
                        None => return Poll::Ready(Ok(())),
                    }
                }
                Mode::Inflating(inflater) => {
                    let fed = SCRATCH.with(|scratch| {
                        let mut scratch = scratch.borrow_mut();
                        let mut chunk = ReadBuf::new(&mut scratch[..]);
                        match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                            Poll::Ready(Ok(())) if chunk.filled().is_empty() => {
                                Poll::Ready(Ok(false))
                            }
                            Poll::Ready(Ok(())) => Poll::Ready(
                                inflater
                                    .feed(chunk.filled(), &mut this.pending)
                                    .map(|()| true)
                                    .map_err(|e: InflateError| {
                                        io::Error::new(io::ErrorKind::InvalidData, e)
                                    }),
                            ),
                            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                            Poll::Pending => Poll::Pending,
                        }
                    });
                    match fed {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                        Poll::Ready(Ok(true)) => {}
                        Poll::Ready(Err(e)) => {
                            tracing::warn!(error = %e, "the server's compressed data refused");
                            return Poll::Ready(Err(e));
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
}
