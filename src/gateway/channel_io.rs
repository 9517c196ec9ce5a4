//! A session channel's two directions, kept apart so that output never
//! holds up input: a pump task drains the client's input at once (russh's
//! session loop waits on a channel that is not read, and with it every
//! other channel, keepalives and disconnects), while the command loop may
//! wait on the client's window to write. Input queued beyond
//! [`MAX_QUEUED`] bytes ends the channel with an error instead of growing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use russh::server::Msg;
use russh::{Channel, ChannelId, ChannelMsg, ChannelWriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Input a session channel may have waiting, in bytes: 256 command lines
/// of the longest kind.
pub const MAX_QUEUED: usize = 256 * crate::commands::MAX_LINE;

enum Input {
    Msg(ChannelMsg),
    /// More than [`MAX_QUEUED`] bytes were waiting; the rest was dropped.
    Overflow,
}

pub struct Io {
    id: ChannelId,
    rx: mpsc::UnboundedReceiver<Input>,
    tx: ChannelWriteHalf<Msg>,
    queued: Arc<AtomicUsize>,
    cancel: CancellationToken,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for Io {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

fn data_len(m: &ChannelMsg) -> usize {
    match m {
        ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => data.len(),
        _ => 0,
    }
}

impl Io {
    /// Splits `channel` and starts its input pump. `cancel` ends the
    /// channel at the next wait or write (revocation, session end).
    pub fn new(channel: Channel<Msg>, cancel: CancellationToken) -> Io {
        let id = channel.id();
        let (mut read, tx) = channel.split();
        let (in_tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let counted = queued.clone();
        let pump = tokio::spawn(async move {
            let mut overflowed = false;
            while let Some(m) = read.wait().await {
                let n = data_len(&m);
                if overflowed {
                    continue;
                }
                if counted.fetch_add(n, Ordering::Relaxed) + n > MAX_QUEUED {
                    overflowed = true;
                    let _ = in_tx.send(Input::Overflow);
                    continue;
                }
                if in_tx.send(Input::Msg(m)).is_err() {
                    break;
                }
            }
        });
        Io {
            id,
            rx,
            tx,
            queued,
            cancel,
            pump,
        }
    }

    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// True once the channel was cancelled (access revoked, session
    /// ended): queued input must not run.
    pub fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The next message from the client; `None` when the channel closed,
    /// was cancelled, or its input overflowed (the client is told).
    pub async fn wait(&mut self) -> Option<ChannelMsg> {
        let next = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => None,
            m = self.rx.recv() => m,
        };
        match next? {
            Input::Msg(m) => {
                self.queued.fetch_sub(data_len(&m), Ordering::Relaxed);
                Some(m)
            }
            Input::Overflow => {
                let line = format!(
                    "error: input arrives faster than commands run (over {MAX_QUEUED} bytes waiting); closing\n"
                );
                let _ = self.extended_data(1, line.as_bytes()).await;
                None
            }
        }
    }

    /// Runs a write unless the channel is cancelled first.
    async fn unless_cancelled(
        &self,
        write: impl std::future::Future<Output = Result<(), russh::Error>>,
    ) -> Result<(), russh::Error> {
        // Cancellation first: a cancelled channel is closed by whoever
        // cancelled it, after telling the person why, and nothing of ours
        // may come after that.
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(russh::Error::SendError),
            r = write => r,
        }
    }

    pub async fn data(&self, bytes: &[u8]) -> Result<(), russh::Error> {
        self.unless_cancelled(self.tx.data(bytes)).await
    }

    pub async fn extended_data(&self, ext: u32, bytes: &[u8]) -> Result<(), russh::Error> {
        self.unless_cancelled(self.tx.extended_data(ext, bytes))
            .await
    }

    pub async fn exit_status(&self, code: u32) -> Result<(), russh::Error> {
        self.unless_cancelled(self.tx.exit_status(code)).await
    }

    pub async fn eof(&self) -> Result<(), russh::Error> {
        self.unless_cancelled(self.tx.eof()).await
    }

    pub async fn close(&self) -> Result<(), russh::Error> {
        self.unless_cancelled(self.tx.close()).await
    }
}
