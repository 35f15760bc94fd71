//! Group commit: one writer task per table that turns concurrent writes
//! into one transaction, so a burst of writes costs one fsync, not one
//! each. Used by the directory's record store and by the node's messaging
//! inbox and outbox (acknowledgements share the outbox's transactions).
//!
//! [`GroupCommit`] owns the queue and the loop: it takes the first waiting
//! job, then every job already queued up to a row cap (a job that would
//! pass the cap is held and goes first in the next batch), lets the callers
//! that are on their way join, runs [`Commit::commit`] over the batch in
//! arrival order, and answers each caller only after that commit returned:
//! persist, then acknowledge. If the commit fails, every caller of that
//! batch gets [`CommitError::Failed`] and nothing is acknowledged; the
//! writer goes on with the next batch. A caller that stops waiting does not
//! stop the writer, and its job is still written.
//!
//! It lives in `openred-http` because that is the one crate that both the
//! directory and the node depend on and that may use tokio: `openred-core`
//! must stay free of I/O and of tokio, and the node must never import the
//! directory. It knows no database: the SQL stays in each store.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// Why a write was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The transaction of the write's batch failed (the cause is logged by
    /// the writer): none of that batch's writes is acknowledged.
    #[error("group commit failed: {0}")]
    Failed(String),
    /// The writer task has stopped (its runtime is shutting down, or a
    /// commit panicked): nothing more will be written.
    #[error("the writer has stopped")]
    WriterStopped,
}

/// What a group-commit writer writes, and how.
pub trait Commit: Send + Sync + 'static {
    /// One caller's write.
    type Job: Send + 'static;
    /// What that caller is answered once the batch has committed.
    type Outcome: Send + 'static;
    /// Why a batch failed; logged in full, passed to callers as text.
    type Error: std::fmt::Display + Send;

    /// The rows `job` writes: what [`Limits::max_rows`] counts. One by
    /// default.
    fn rows(_job: &Self::Job) -> usize {
        1
    }

    /// Writes `batch` in one transaction, in order, and returns one
    /// outcome per job, in the same order. Returns only once the
    /// transaction has committed (or failed: then nothing of it may stay).
    fn commit(
        &self,
        batch: &[Self::Job],
    ) -> impl Future<Output = Result<Vec<Self::Outcome>, Self::Error>> + Send;
}

/// The sizes of a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Named in the writer's log lines.
    pub name: &'static str,
    /// Jobs waiting for a commit, at most; further callers wait to queue.
    pub queue: usize,
    /// Rows one batch takes, at most. The first job of a batch is always
    /// taken, so a job larger than this goes alone.
    pub max_rows: usize,
}

type Reply<R> = oneshot::Sender<Result<R, CommitError>>;

/// The handle to a group-commit writer task: cheap to clone, and the task
/// ends when the last handle is dropped and the queue is empty.
pub struct GroupCommit<C: Commit> {
    queue: mpsc::Sender<(C::Job, Reply<C::Outcome>)>,
}

impl<C: Commit> Clone for GroupCommit<C> {
    fn clone(&self) -> Self {
        GroupCommit {
            queue: self.queue.clone(),
        }
    }
}

impl<C: Commit> std::fmt::Debug for GroupCommit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field(
                "queued",
                &(self.queue.max_capacity() - self.queue.capacity()),
            )
            .finish()
    }
}

/// The answer to one queued write (see [`GroupCommit::enqueue`]).
pub struct Answer<R>(oneshot::Receiver<Result<R, CommitError>>);

impl<R> Answer<R> {
    /// Waits until the write's batch has committed (or failed).
    pub async fn wait(self) -> Result<R, CommitError> {
        self.0.await.map_err(|_| CommitError::WriterStopped)?
    }
}

impl<C: Commit> GroupCommit<C> {
    /// Starts the writer task on the current tokio runtime.
    pub fn spawn(committer: C, limits: Limits) -> GroupCommit<C> {
        let (queue, jobs) = mpsc::channel(limits.queue.max(1));
        tokio::spawn(run(committer, limits, jobs));
        GroupCommit { queue }
    }

    /// Writes `job` with the next batch; answers once that batch has
    /// committed.
    pub async fn write(&self, job: C::Job) -> Result<C::Outcome, CommitError> {
        self.enqueue(job).await?.wait().await
    }

    /// Queues `job` and returns its answer without waiting for the commit,
    /// so that a caller can queue several writes in a known order. The job
    /// is written even if the answer is dropped.
    pub async fn enqueue(&self, job: C::Job) -> Result<Answer<C::Outcome>, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((job, reply))
            .await
            .map_err(|_| CommitError::WriterStopped)?;
        Ok(Answer(answer))
    }
}

/// The writer loop: one batch per turn until every handle is gone.
async fn run<C: Commit>(
    committer: C,
    limits: Limits,
    mut queue: mpsc::Receiver<(C::Job, Reply<C::Outcome>)>,
) {
    let mut jobs = Vec::new();
    let mut replies = Vec::new();
    // A job taken from the queue that did not fit the last batch.
    let mut held: Option<(C::Job, Reply<C::Outcome>)> = None;
    loop {
        let Some((job, reply)) = (match held.take() {
            Some(first) => Some(first),
            None => queue.recv().await,
        }) else {
            return;
        };
        let mut rows = C::rows(&job);
        jobs.push(job);
        replies.push(reply);
        // Take what is queued; then, as long as more keeps arriving, let
        // the callers that are still on their way queue too. The callers
        // answered by the last commit come back within microseconds of
        // each other: without this, the first of them starts a small
        // commit and the rest wait out its fsync, so batches alternated
        // between small and large (half the callers a batch with 512
        // senders). One yield costs microseconds when nothing else comes.
        'gather: loop {
            while rows < limits.max_rows {
                match queue.try_recv() {
                    Ok((job, reply)) if rows + C::rows(&job) > limits.max_rows => {
                        held = Some((job, reply));
                        break 'gather;
                    }
                    Ok((job, reply)) => {
                        rows += C::rows(&job);
                        jobs.push(job);
                        replies.push(reply);
                    }
                    Err(_) => break,
                }
            }
            if rows >= limits.max_rows {
                break;
            }
            tokio::task::yield_now().await;
            if queue.is_empty() {
                break;
            }
        }
        let answers = match committer.commit(&jobs).await {
            Ok(outcomes) if outcomes.len() == jobs.len() => outcomes.into_iter().map(Ok).collect(),
            Ok(outcomes) => {
                // A bug in the committer, not in the database: say so to
                // every caller rather than answer some with another's
                // outcome.
                tracing::error!(
                    writer = limits.name,
                    jobs = jobs.len(),
                    outcomes = outcomes.len(),
                    "a group commit gave the wrong number of outcomes"
                );
                failed(jobs.len(), "the commit gave the wrong number of outcomes")
            }
            Err(e) => {
                tracing::error!(writer = limits.name, error = %e, jobs = jobs.len(), "a group commit failed");
                failed(jobs.len(), &e.to_string())
            }
        };
        // A caller that stopped waiting has dropped its receiver: nothing
        // to tell it, and the others are still answered.
        for (reply, answer) in replies.drain(..).zip(answers) {
            let _ = reply.send(answer);
        }
        jobs.clear();
    }
}

fn failed<R>(count: usize, message: &str) -> Vec<Result<R, CommitError>> {
    (0..count)
        .map(|_| Err(CommitError::Failed(message.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::{mpsc, Semaphore};

    use super::*;

    /// A job: its label and its rows. A job labelled `FAIL` fails its
    /// batch, `PANIC` panics in the commit.
    type TestJob = (u32, usize);
    const FAIL: u32 = 13;
    const PANIC: u32 = 66;

    /// Records every batch it is given (when it starts it, and when it
    /// committed), and starts each only when the test allows one more.
    struct Recorder {
        started: mpsc::UnboundedSender<Vec<u32>>,
        committed: Arc<Mutex<Vec<Vec<u32>>>>,
        gate: Arc<Semaphore>,
    }

    impl Commit for Recorder {
        type Job = TestJob;
        type Outcome = u32;
        type Error = String;

        fn rows(job: &TestJob) -> usize {
            job.1
        }

        async fn commit(&self, batch: &[TestJob]) -> Result<Vec<u32>, String> {
            let labels: Vec<u32> = batch.iter().map(|j| j.0).collect();
            let _ = self.started.send(labels.clone());
            self.gate
                .acquire()
                .await
                .map_err(|e| e.to_string())?
                .forget();
            if labels.contains(&PANIC) {
                panic!("a commit panicked");
            }
            if labels.contains(&FAIL) {
                return Err("disk full".into());
            }
            self.committed
                .lock()
                .map_err(|e| e.to_string())?
                .push(labels.clone());
            Ok(labels.iter().map(|l| l * 10).collect())
        }
    }

    struct Harness {
        writer: GroupCommit<Recorder>,
        started: mpsc::UnboundedReceiver<Vec<u32>>,
        committed: Arc<Mutex<Vec<Vec<u32>>>>,
        gate: Arc<Semaphore>,
    }

    fn harness(max_rows: usize) -> Harness {
        let (started, started_rx) = mpsc::unbounded_channel();
        let committed = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let writer = GroupCommit::spawn(
            Recorder {
                started,
                committed: committed.clone(),
                gate: gate.clone(),
            },
            Limits {
                name: "test",
                queue: 64,
                max_rows,
            },
        );
        Harness {
            writer,
            started: started_rx,
            committed,
            gate,
        }
    }

    impl Harness {
        /// Queues jobs in order and returns their answers.
        async fn enqueue(&self, jobs: &[TestJob]) -> Vec<Answer<u32>> {
            let mut answers = Vec::new();
            for job in jobs {
                answers.push(self.writer.enqueue(*job).await.unwrap());
            }
            answers
        }

        /// Makes the writer busy with a batch of job 0 alone, so that
        /// what is queued next waits for the following batches.
        async fn busy(&mut self) -> Answer<u32> {
            let answer = self.writer.enqueue((0, 1)).await.unwrap();
            assert_eq!(self.started.recv().await.unwrap(), [0]);
            answer
        }

        /// Lets the next batch commit and returns the labels it started with.
        async fn next_batch(&mut self) -> Vec<u32> {
            self.gate.add_permits(1);
            self.started.recv().await.unwrap()
        }
    }

    async fn all(answers: Vec<Answer<u32>>) -> Vec<Result<u32, CommitError>> {
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.wait().await);
        }
        results
    }

    #[tokio::test]
    async fn batches_take_what_is_queued_in_arrival_order_and_answer_after_the_commit() {
        let mut h = harness(100);
        let first = h.busy().await;
        let answers = h.enqueue(&[(3, 1), (1, 1), (2, 1)]).await;
        // Batch [0] waits at the gate: nothing is acknowledged before its
        // commit returns.
        assert!(h.committed.lock().unwrap().is_empty());
        assert_eq!(h.next_batch().await, [3, 1, 2]);
        assert_eq!(first.wait().await, Ok(0));
        h.gate.add_permits(1);
        assert_eq!(all(answers).await, [Ok(30), Ok(10), Ok(20)]);
        assert_eq!(*h.committed.lock().unwrap(), [vec![0], vec![3, 1, 2]]);
    }

    #[tokio::test]
    async fn the_row_cap_holds_and_the_job_that_did_not_fit_goes_first_next_time() {
        let mut h = harness(10);
        let first = h.busy().await;
        // 4 + 5 rows fit; 3 more would make 12: job 3 is held, and job 4
        // (1 row, which would fit) stays behind it, in arrival order.
        let answers = h.enqueue(&[(1, 4), (2, 5), (3, 3), (4, 1), (5, 20)]).await;
        assert_eq!(h.next_batch().await, [1, 2]);
        assert_eq!(h.next_batch().await, [3, 4]);
        // A job larger than the cap goes alone.
        assert_eq!(h.next_batch().await, [5]);
        h.gate.add_permits(1);
        assert_eq!(first.wait().await, Ok(0));
        assert_eq!(all(answers).await, [Ok(10), Ok(20), Ok(30), Ok(40), Ok(50)]);
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_caller_of_its_batch_and_the_writer_goes_on() {
        let mut h = harness(100);
        let first = h.busy().await;
        let failing = h.enqueue(&[(1, 1), (FAIL, 1), (2, 1)]).await;
        assert_eq!(h.next_batch().await, [1, FAIL, 2]);
        let later = h.enqueue(&[(4, 1)]).await;
        assert_eq!(h.next_batch().await, [4]);
        h.gate.add_permits(1);
        assert_eq!(first.wait().await, Ok(0));
        let failed = Err(CommitError::Failed("disk full".into()));
        assert_eq!(all(failing).await, [failed.clone(), failed.clone(), failed]);
        assert_eq!(all(later).await, [Ok(40)]);
        assert_eq!(*h.committed.lock().unwrap(), [vec![0], vec![4]]);
    }

    #[tokio::test]
    async fn callers_that_stop_waiting_do_not_stop_the_writer() {
        let mut h = harness(100);
        let first = h.busy().await;
        // One caller drops its answer; another is cancelled while it
        // waits inside `write`.
        drop(h.enqueue(&[(1, 1)]).await);
        let writer = h.writer.clone();
        let cancelled = tokio::spawn(async move { writer.write((2, 1)).await });
        // The spawned caller queues when this task yields; then job 3 is
        // queued behind it.
        for _ in 0..1000 {
            if h.writer.queue.capacity() == 62 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(h.writer.queue.capacity(), 62, "the spawned caller queued");
        let kept = h.enqueue(&[(3, 1)]).await;
        cancelled.abort();
        assert!(cancelled.await.unwrap_err().is_cancelled());
        drop(first);
        assert_eq!(h.next_batch().await, [1, 2, 3]);
        h.gate.add_permits(1);
        assert_eq!(all(kept).await, [Ok(30)]);
        // Their jobs were written all the same, and the writer goes on.
        let later = h.enqueue(&[(4, 1)]).await;
        assert_eq!(h.next_batch().await, [4]);
        assert_eq!(all(later).await, [Ok(40)]);
        assert_eq!(
            *h.committed.lock().unwrap(),
            [vec![0], vec![1, 2, 3], vec![4]]
        );
    }

    #[tokio::test]
    async fn a_writer_whose_commit_panicked_answers_writer_stopped() {
        let mut h = harness(100);
        let first = h.busy().await;
        let answers = h.enqueue(&[(1, 1), (PANIC, 1)]).await;
        assert_eq!(h.next_batch().await, [1, PANIC]);
        h.gate.add_permits(1);
        assert_eq!(first.wait().await, Ok(0));
        assert_eq!(
            all(answers).await,
            [
                Err(CommitError::WriterStopped),
                Err(CommitError::WriterStopped)
            ]
        );
        assert_eq!(
            h.writer.write((2, 1)).await,
            Err(CommitError::WriterStopped)
        );
    }

    #[test]
    fn a_writer_whose_runtime_has_shut_down_answers_writer_stopped() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        };
        let (serving, caller) = (runtime(), runtime());
        let h = {
            let _inside = serving.enter();
            harness(100)
        };
        drop(serving);
        assert_eq!(
            caller.block_on(h.writer.write((1, 1))),
            Err(CommitError::WriterStopped)
        );
    }
}
