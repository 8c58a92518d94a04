//! The run-time budget of flag evaluations (issue 17; D85).
//!
//! D72 bounds a rule's steps when it is submitted, but a step that copies or searches a value is
//! linear in it: a large context (up to the 8 MiB body) makes an accepted rule slower than its
//! bound says, and datalogic cannot be stopped midway. So a request whose work may be large
//! (the steps its rules may take times its context's bytes, above [`INLINE_WORK`]) is not
//! evaluated on the request's task: it runs on tokio's blocking pool, at most `limit` at once,
//! and the request waits for it no longer than its budget ([`budget_for`]). Past the budget, or
//! when every permit is taken, the request gets an error at once (`OverBudget`, counted in
//! `grapevine_evaluations_over_budget_total`); an evaluation already running finishes on its
//! thread and keeps its permit until then, so runaway ones cannot pile up. Requests of ordinary
//! size (a rule of a few thousand steps, a context of a few KB) run inline as before: a thread
//! hand-off costs more than they do.

use std::sync::Arc;
use std::time::Duration;

use grapevine_proto::eval::FlagDefinition;
use tokio::sync::Semaphore;

use crate::metrics::{Metrics, reason};

/// Most work (steps times context bytes) a request may do on its own task: about 16 MB read
/// or copied, a few milliseconds at worst.
pub const INLINE_WORK: u64 = 1 << 24;

/// The least a request waits for an evaluation moved off its task...
const BASE_BUDGET: Duration = Duration::from_millis(100);

/// ...plus this per step its rules may take: four times the costliest step measured (D72).
const NANOS_PER_STEP: u64 = 200;

/// Why a request was answered without its evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error(
        "the evaluation ran past its budget of {budget_ms} ms (its rules take up to {steps} steps, each longer on a context of {context_bytes} bytes); the node stopped waiting for it"
    )]
    Timeout { budget_ms: u64, steps: u64, context_bytes: usize },
    #[error("{limit} costly evaluations are running already (the most this node runs at once); try again shortly")]
    Busy { limit: usize },
}

/// Whether a request of `steps` on a context of `context_bytes` runs on its own task.
pub fn is_small(steps: u64, context_bytes: usize) -> bool {
    steps.saturating_mul(u64::try_from(context_bytes.max(64)).unwrap_or(u64::MAX)) <= INLINE_WORK
}

/// The steps a request that evaluates `flags` may take.
pub fn steps<'a>(flags: impl IntoIterator<Item = &'a FlagDefinition>) -> u64 {
    flags.into_iter().fold(0, |sum, flag| sum.saturating_add(flag.cost()))
}

/// How long a request waits for an evaluation of `steps` moved off its task.
pub fn budget_for(steps: u64) -> Duration {
    BASE_BUDGET + Duration::from_nanos(steps.saturating_mul(NANOS_PER_STEP))
}

/// The permits of costly evaluations, shared by OFREP, the admin API and flagd's services.
#[derive(Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl Budget {
    /// At most `limit` costly evaluations at once (at least one).
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> Self {
        let limit = limit.max(1);
        Budget { permits: Arc::new(Semaphore::new(limit)), limit, metrics }
    }

    /// Runs `work`, an evaluation of rules bounded by `steps` on a context of `context_bytes`:
    /// inline when small, else on the blocking pool within its budget.
    pub async fn run<T: Send + 'static>(
        &self,
        steps: u64,
        context_bytes: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, OverBudget> {
        if is_small(steps, context_bytes) {
            return Ok(work());
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.evaluations_over_budget.get_or_create(&reason("busy")).inc();
            return Err(OverBudget::Busy { limit: self.limit });
        };
        self.metrics.costly_evaluations.inc();
        let budget = budget_for(steps);
        let task = tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        });
        match tokio::time::timeout(budget, task).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(error)) => std::panic::resume_unwind(error.into_panic()),
            Err(_) => {
                self.metrics.evaluations_over_budget.get_or_create(&reason("timeout")).inc();
                let budget_ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX);
                Err(OverBudget::Timeout { budget_ms, steps, context_bytes })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: usize) -> Budget {
        Budget::new(limit, Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn small_work_runs_inline_and_large_work_within_its_budget() {
        let budget = budget(1);
        let here = std::thread::current().id();
        let inline = budget.run(100, 300, move || std::thread::current().id() == here).await;
        assert_eq!(inline, Ok(true), "a rule of 100 steps on a 300-byte context runs on the request's task");
        let moved = budget.run(250_000, 1_000, move || std::thread::current().id() == here).await;
        assert_eq!(moved, Ok(false), "a costly rule runs on the blocking pool");
        assert_eq!(budget.metrics.costly_evaluations.get(), 1);
    }

    #[tokio::test]
    async fn an_evaluation_past_its_budget_is_answered_and_holds_its_permit_until_it_ends() {
        let budget = budget(1);
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let steps = 100_000;
        let started = crate::clock::now();
        let slow = budget.run(steps, 1 << 20, move || hold.recv().ok()).await;
        let expected = OverBudget::Timeout { budget_ms: 120, steps, context_bytes: 1 << 20 };
        assert_eq!(slow, Err(expected));
        assert!(crate::clock::elapsed(started) < Duration::from_secs(5), "answered without waiting for the work");
        assert!(slow.unwrap_err().to_string().contains("past its budget of 120 ms"));
        // Its thread still runs it: the next costly evaluation is refused at once, a small one is not.
        assert_eq!(budget.run(steps, 1 << 20, || ()).await, Err(OverBudget::Busy { limit: 1 }));
        assert_eq!(budget.run(10, 100, || 7).await, Ok(7));
        release.send(()).unwrap();
        let freed = async {
            while budget.permits.available_permits() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), freed).await.expect("the permit comes back once the work ends");
        assert_eq!(budget.run(steps, 1 << 20, || 8).await, Ok(8));
        let counted = |why: &'static str| budget.metrics.evaluations_over_budget.get_or_create(&reason(why)).get();
        assert_eq!((counted("timeout"), counted("busy")), (1, 1));
        assert_eq!(budget.metrics.costly_evaluations.get(), 2, "the one past its budget and the last");
    }
}
