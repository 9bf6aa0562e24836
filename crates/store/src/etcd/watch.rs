//! A watch that survives member failures: it remembers the revision after the last
//! event it delivered and, when the stream breaks or ends, watches again from there
//! (with backoff), so each change arrives exactly once and in order. A compacted start
//! revision ends the stream with [`WatchEvent::Compacted`].
//!
//! A member that hangs with its sockets open breaks nothing, so the watch checks: after
//! `attempt_timeout` of silence it asks the member for a progress report on the same
//! stream, and if that gets no answer within another `attempt_timeout` the member is
//! marked failed and the watch is opened again, from the same revision, on the next
//! member; a watch also moves at once when another request finds its member failed.
//! The answers to these requests only prove liveness: their revision is not
//! used to move the resume point (etcd 3.4 may send it ahead of events still queued).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse};
use futures::StreamExt;

use super::retry::Backoff;
use super::{Inner, convert_kv, prefix_range};
use crate::{Revision, WatchEvent, WatchStream};

/// Longest pause between two attempts to re-establish a watch.
const MAX_RESUME_DELAY: Duration = Duration::from_secs(2);

/// The state carried from one poll of the stream to the next.
struct Resumer {
    inner: Arc<Inner>,
    start: Vec<u8>,
    end: Vec<u8>,
    /// Every event below this revision has been queued; resume from here.
    next: Revision,
    stream: Option<etcd_client::WatchStream>,
    /// The member `stream` is on.
    member: usize,
    /// [`super::members::Members::failure_count`] of `member` when the stream was opened.
    member_failures: u64,
    /// A progress request was sent on a silent stream and is not answered yet.
    awaiting_progress: bool,
    queue: VecDeque<WatchEvent>,
    backoff: Backoff,
    finished: bool,
}

/// Events for keys under `prefix` from revision `from` (> 0) on.
pub(crate) fn resuming(inner: Arc<Inner>, prefix: &str, from: Revision) -> WatchStream {
    let (start, end) = prefix_range(prefix.as_bytes());
    let state = Resumer {
        inner,
        start,
        end,
        next: from,
        stream: None,
        member: 0,
        member_failures: 0,
        awaiting_progress: false,
        queue: VecDeque::new(),
        backoff: Backoff::new(MAX_RESUME_DELAY),
        finished: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        let event = state.next_event().await?;
        Some((Ok(event), state))
    })
    .boxed()
}

impl Resumer {
    /// The next event, or `None` once the stream has ended (after `Compacted`).
    async fn next_event(&mut self) -> Option<WatchEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                if matches!(event, WatchEvent::Compacted { .. }) {
                    self.finished = true;
                    self.stream = None;
                }
                return Some(event);
            }
            if self.finished {
                return None;
            }
            let Some(stream) = self.stream.as_mut() else {
                self.open().await;
                continue;
            };
            let silence = self.inner.config.attempt_timeout;
            let inner = self.inner.clone();
            let member_failed = inner.members.failure_signal(self.member).notified();
            if inner.members.failure_count(self.member) != self.member_failures {
                // Another request found the member failed while we were not waiting.
                let why = "its member failed another request".to_string();
                self.lost_with(why, false).await;
                continue;
            }
            let message = tokio::select! {
                message = tokio::time::timeout(silence, stream.message()) => message,
                () = member_failed => {
                    let why = "its member failed another request".to_string();
                    self.lost_with(why, false).await;
                    continue;
                }
            };
            match message {
                Ok(Ok(Some(resp))) => {
                    self.inner.members.answered(self.member);
                    let probe_answer = std::mem::take(&mut self.awaiting_progress);
                    if let Some(why) = self.absorb(resp, probe_answer) {
                        self.lost(why).await;
                    }
                }
                Ok(Ok(None)) => self.lost("stream ended".to_string()).await,
                Ok(Err(e)) => self.lost(e.to_string()).await,
                Err(_) if self.awaiting_progress => {
                    let why = format!("no answer to a progress request within {silence:?}");
                    self.lost(why).await;
                }
                Err(_) => match tokio::time::timeout(silence, stream.request_progress()).await {
                    Ok(Ok(())) => self.awaiting_progress = true,
                    Ok(Err(e)) => self.lost(format!("requesting progress: {e}")).await,
                    Err(_) => {
                        self.lost("requesting progress: stream stuck".to_string())
                            .await
                    }
                },
            }
        }
    }

    /// Opens a watch from `self.next`; on failure waits a little (the caller loops).
    async fn open(&mut self) {
        let options = WatchOptions::new()
            .with_range(self.end.clone())
            .with_start_revision(self.next)
            .with_prev_key()
            // Lets an idle watch move `next` forward, so that resuming it after a
            // disconnect does not hit a compaction that only removed others' history.
            .with_progress_notify();
        self.member = self.inner.members.preferred();
        self.member_failures = self.inner.members.failure_count(self.member);
        self.awaiting_progress = false;
        let timeout = self.inner.config.attempt_timeout;
        let client = match self.inner.members.client(self.member, timeout).await {
            Ok(client) => client,
            Err(failure) => {
                self.lost(format!("connecting: {}", failure.message()))
                    .await;
                return;
            }
        };
        let mut client = client.watch_client();
        let watching = client.watch(self.start.clone(), Some(options));
        match tokio::time::timeout(timeout, watching).await {
            Ok(Ok(stream)) => self.stream = Some(stream),
            Ok(Err(e)) => self.lost(format!("opening: {e}")).await,
            Err(_) => {
                self.lost(format!("opening: no answer within {timeout:?}"))
                    .await
            }
        }
    }

    /// Drops the broken stream, marks its member failed (so that the next attempt goes
    /// to another one) and pauses before the next attempt.
    async fn lost(&mut self, why: String) {
        self.lost_with(why, true).await;
    }

    /// [`Resumer::lost`], marking the member failed only if `blame` (not when another
    /// request already did, which would double its back-off).
    async fn lost_with(&mut self, why: String, blame: bool) {
        self.stream = None;
        self.awaiting_progress = false;
        if blame {
            self.inner.members.failed(self.member);
        }
        let delay = self.backoff.next_delay();
        tracing::debug!(
            endpoint = %self.inner.url,
            member = self.inner.members.address(self.member),
            from = self.next,
            error = %why,
            "etcd watch interrupted, resuming in {delay:?}"
        );
        tokio::time::sleep(delay).await;
    }

    /// Queues the events of one response and moves `next` past them. Returns why the
    /// stream must be re-opened, if it must. `probe_answer`: the response came while our
    /// progress request was outstanding, so an empty one may be its (untrusted) answer.
    fn absorb(&mut self, resp: WatchResponse, probe_answer: bool) -> Option<String> {
        if resp.compact_revision() > 0 {
            self.queue.push_back(WatchEvent::Compacted {
                compact_revision: resp.compact_revision(),
            });
            return None;
        }
        if resp.canceled() {
            // Cancelled for another reason (e.g. the member lost its leader): watch
            // again from `next`, after a pause.
            return Some(format!("cancelled by the server: {}", resp.cancel_reason()));
        }
        if resp.events().is_empty() && !resp.created() {
            // The stream is alive and its member answers.
            self.backoff.reset();
            // A periodic progress notification: etcd promises that every later event
            // of this watch has a higher revision than the header's. The answer to a
            // progress request (watch id -1) is not trusted that far.
            if !probe_answer
                && resp.watch_id() != -1
                && let Some(header) = resp.header()
            {
                self.next = self.next.max(header.revision() + 1);
            }
            return None;
        }
        let mut last = None;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            // etcd sends all events of one revision in one response, so anything below
            // `next` was delivered before a reconnect: skip it.
            if revision < self.next {
                continue;
            }
            last = Some(revision);
            self.queue.push_back(match event.event_type() {
                EventType::Put => WatchEvent::Put(convert_kv(kv)),
                EventType::Delete => WatchEvent::Delete {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    revision,
                    prev: event.prev_kv().map(convert_kv),
                },
            });
        }
        if let Some(revision) = last {
            self.next = revision + 1;
            // Reset only on delivered events: a watch that is created and cancelled
            // over and over must keep backing off.
            self.backoff.reset();
        }
        None
    }
}
