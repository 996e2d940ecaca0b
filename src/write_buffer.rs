//! A write buffer under the WebSocket layer that exists only while there is something to
//! write.
//!
//! The WebSocket layer keeps its own write buffer for the socket's whole life, at the size of
//! the largest burst it ever held: an idle socket in a busy room would keep tens of KiB it no
//! longer needs (see BENCHMARKS.md). So confab has it hand every frame down at once (its write
//! buffer size is 0) and buffers here instead: frames gather in [`WriteBuffer`] until the
//! socket flushes, which makes a burst one write to the network, and the flush gives the
//! memory back.
//!
//! Two kinds of writes come down. The socket's event frames, already encoded
//! ([`Frame::wire`](crate::protocol::Frame::wire)), are [put](WriteBuffer::poll_put) whole or
//! not at all, waiting while a full buffer goes out. The WebSocket layer's own frames (pings,
//! pongs, closes) come through [`AsyncWrite`] and are always taken whole at once: the layer
//! never holds half a frame of its own that a later put could overtake on the wire.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered bytes past which a write goes to the network before more are taken, even before
/// the socket flushes.
pub const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// The buffer's first allocation after a flush freed it: room for a chat frame or two.
const FIRST_ALLOCATION_BYTES: usize = 512;
/// Buffered bytes past which the WebSocket layer's own frames are refused with an error: a
/// peer that keeps sending pings and never reads their pongs ends its socket here.
pub const MAX_BUFFERED_BYTES: usize = 4 * WRITE_BUFFER_BYTES;

/// A stream whose writes are gathered until a flush, in a buffer freed by the flush.
#[derive(Debug)]
pub struct WriteBuffer<T: AsyncWrite + Unpin> {
    inner: T,
    /// The gathered bytes; holds no memory when nothing waits to be written.
    buffer: Vec<u8>,
    /// How much of `buffer` the stream already took.
    written: usize,
}

impl<T: AsyncWrite + Unpin> WriteBuffer<T> {
    /// Wraps `inner`; nothing is allocated until the first write.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            written: 0,
        }
    }

    /// The bytes gathered and not yet handed to the stream, and the memory held for them.
    pub fn buffered(&self) -> (usize, usize) {
        (self.buffer.len() - self.written, self.buffer.capacity())
    }

    /// Takes `bytes` whole (an encoded frame), after writing out what is gathered if they
    /// would not fit beside it; `Pending` until that is written.
    pub fn poll_put(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<()>> {
        if !self.buffer.is_empty() && self.buffer.len() + bytes.len() > WRITE_BUFFER_BYTES {
            ready!(self.poll_write_out(cx))?;
        }
        self.append(bytes);
        Poll::Ready(Ok(()))
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.buffer.capacity() == 0 {
            // Most flushes carry a frame or two: a small first allocation is one the allocator
            // serves from its per-thread cache; a burst doubles it a few times.
            self.buffer.reserve(FIRST_ALLOCATION_BYTES.max(bytes.len()));
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Hands everything gathered to the stream; the memory stays for the rest of the burst.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let unwritten = &self.buffer[self.written..];
            let taken = ready!(Pin::new(&mut self.inner).poll_write(cx, unwritten))?;
            if taken == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += taken;
        }
        self.buffer.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Hands everything gathered to the stream and lets the buffer's memory go: the next
    /// burst allocates anew, an idle socket holds nothing.
    fn poll_write_out_and_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_out(cx))?;
        self.buffer = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> Drop for WriteBuffer<T> {
    /// Writes what is left, as far as the stream takes it without waiting. The WebSocket
    /// layer writes its answer to a peer's close frame and then never flushes again: that
    /// answer goes out here, as the socket ends.
    fn drop(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        let _ = self.poll_write_out(&mut cx);
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for WriteBuffer<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteBuffer<T> {
    /// The WebSocket layer's own frames: taken whole at once, never `Pending` (see the module
    /// notes). A full buffer is written out first as far as the stream takes it.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buffer.len() + bytes.len() > WRITE_BUFFER_BYTES
            && let Poll::Ready(Err(error)) = this.poll_write_out(cx)
        {
            return Poll::Ready(Err(error));
        }
        if this.buffer.len() - this.written + bytes.len() > MAX_BUFFERED_BYTES {
            return Poll::Ready(Err(io::Error::other(
                "the peer does not read what the socket writes",
            )));
        }
        this.append(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_out_and_release(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_out_and_release(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn writes_wait_for_the_flush_which_frees_the_buffer() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let mut writer = WriteBuffer::new(near);
        writer.write_all(b"one ").await.unwrap();
        writer.write_all(b"two").await.unwrap();
        assert_eq!(
            writer.buffered().0,
            7,
            "nothing is written before the flush"
        );
        let mut got = [0u8; 7];
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), far.read(&mut got))
                .await
                .is_err(),
            "the far end got nothing yet"
        );
        writer.flush().await.unwrap();
        assert_eq!(writer.buffered(), (0, 0), "the flush let the memory go");
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two");
    }

    #[tokio::test]
    async fn what_was_never_flushed_goes_out_when_the_stream_ends() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut writer = WriteBuffer::new(near);
        writer.write_all(b"close reply").await.unwrap();
        drop(writer);
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"close reply");
    }

    #[tokio::test]
    async fn a_full_buffer_goes_out_before_more_is_put() {
        let (near, mut far) = tokio::io::duplex(256 * 1024);
        let mut writer = WriteBuffer::new(near);
        let chunk = vec![7u8; 1000];
        let fit = WRITE_BUFFER_BYTES / chunk.len();
        for _ in 0..=fit {
            std::future::poll_fn(|cx| writer.poll_put(cx, &chunk))
                .await
                .unwrap();
        }
        let (pending, capacity) = writer.buffered();
        assert_eq!(
            pending,
            chunk.len(),
            "the chunk that did not fit went in after the full buffer was written out"
        );
        assert!(capacity <= 2 * WRITE_BUFFER_BYTES, "{capacity}");
        let mut got = vec![0u8; fit * chunk.len()];
        far.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_makes_puts_wait_not_grow() {
        let (near, _far) = tokio::io::duplex(1024);
        let mut writer = WriteBuffer::new(near);
        let chunk = vec![1u8; 4096];
        let filled = tokio::time::timeout(std::time::Duration::from_millis(200), async {
            loop {
                std::future::poll_fn(|cx| writer.poll_put(cx, &chunk))
                    .await
                    .unwrap();
            }
        })
        .await;
        assert!(filled.is_err(), "puts wait once the peer stops reading");
        let (_, capacity) = writer.buffered();
        assert!(
            capacity <= 2 * WRITE_BUFFER_BYTES,
            "the buffer stays bounded: {capacity}"
        );
    }

    #[tokio::test]
    async fn the_layers_own_frames_are_taken_whole_until_the_limit() {
        let (near, _far) = tokio::io::duplex(1024);
        let mut writer = WriteBuffer::new(near);
        let pong = [0x8a_u8, 125]
            .into_iter()
            .chain([0; 125])
            .collect::<Vec<_>>();
        let mut taken = 0;
        let refused = loop {
            let mut cx = Context::from_waker(Waker::noop());
            match Pin::new(&mut writer).poll_write(&mut cx, &pong) {
                Poll::Ready(Ok(n)) => {
                    assert_eq!(n, pong.len(), "taken whole");
                    taken += n;
                }
                Poll::Ready(Err(error)) => break error,
                Poll::Pending => panic!("the layer's frames never wait"),
            }
        };
        assert!(refused.to_string().contains("does not read"), "{refused}");
        assert!(taken <= MAX_BUFFERED_BYTES + 1024, "{taken}");
        assert!(taken >= MAX_BUFFERED_BYTES - pong.len(), "{taken}");
    }
}
