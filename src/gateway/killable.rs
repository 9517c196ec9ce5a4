//! The TCP stream under an SSH session: it can be cut from outside, and it
//! asks for quick ACKs during the handshake.
//!
//! Cut: russh owns the stream of a session; cutting it lets the login-grace
//! timer end a connection stuck before authentication, when an SSH
//! disconnect message would never be processed (for example in the middle
//! of a key exchange).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Default)]
pub struct KillSwitch {
    killed: AtomicBool,
    reader: Mutex<Option<Waker>>,
    /// A write waiting on a client that does not read is woken too, so a
    /// cut connection ends even when its session is stuck writing.
    writer: Mutex<Option<Waker>>,
}

impl KillSwitch {
    /// Makes the stream's reads and writes fail from now on, waking any
    /// that are pending.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        for slot in [&self.reader, &self.writer] {
            if let Some(w) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                w.wake();
            }
        }
    }
}

pub struct Killable {
    inner: TcpStream,
    switch: Arc<KillSwitch>,
    /// Reads left in which to ask for immediate ACKs (see `poll_read`).
    quick_acks: u8,
}

impl Killable {
    pub fn new(inner: TcpStream) -> (Killable, Arc<KillSwitch>) {
        let switch = Arc::new(KillSwitch::default());
        (
            Killable {
                inner,
                switch: switch.clone(),
                quick_acks: 32,
            },
            switch,
        )
    }
}

fn aborted() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "connection cut by the gateway",
    )
}

impl AsyncRead for Killable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Register the waker before looking at the flag, so a kill between
        // the two still wakes this read.
        *self.switch.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        if self.switch.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(aborted()));
        }
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.quick_acks > 0 && matches!(read, Poll::Ready(Ok(()))) {
            // During the handshake, acknowledge each packet at once: with a
            // delayed ACK the client's Nagle holds its next small packet for
            // 40 ms. Linux drops quick-ACK mode by itself, hence each read.
            self.quick_acks -= 1;
            let _ = socket2::SockRef::from(&self.inner).set_tcp_quickack(true);
        }
        read
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        *self.switch.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        if self.switch.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.switch.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        *self.switch.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        if self.switch.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
