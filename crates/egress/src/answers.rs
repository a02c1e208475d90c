//! One memory budget for every vendor answer buffered at once.
//!
//! Each answer is read whole before it is scrubbed, so without a bound the
//! memory held is `max_concurrent_calls × max_response_body_bytes` (16 GiB
//! with the defaults). [`AnswerBudget`] is a semaphore counted in KiB: an
//! answer takes room as its bytes arrive and gives it back when its
//! [`Reservation`] drops — once the call has handed its answer to the
//! transport. When the budget is full an answer waits up to [`WAIT`] for
//! room, then the call fails with RESOURCE_EXHAUSTED
//! `RESPONSE_BUFFER_EXHAUSTED`.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long an answer waits for room before its call is refused.
pub const WAIT: Duration = Duration::from_millis(250);

const KIB: usize = 1024;

/// The shared budget. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AnswerBudget {
    room: Arc<Semaphore>,
}

/// Room held by one answer.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    /// Bytes accounted for (the permit holds their KiB, rounded up).
    bytes: usize,
}

/// The budget had no room within [`WAIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

impl AnswerBudget {
    /// A budget of `bytes` (rounded up to whole KiB).
    pub fn new(bytes: usize) -> Self {
        let kib = bytes.div_ceil(KIB).min(Semaphore::MAX_PERMITS);
        Self {
            room: Arc::new(Semaphore::new(kib)),
        }
    }

    /// Grows `held` by `more` bytes, waiting up to [`WAIT`] for room.
    pub async fn reserve(&self, held: &mut Reservation, more: usize) -> Result<(), Exhausted> {
        let total = held.bytes + more;
        let need = total.div_ceil(KIB) - held.bytes.div_ceil(KIB);
        if need > 0 {
            let need = u32::try_from(need).map_err(|_| Exhausted)?;
            let room = self.room.clone();
            let permit = match room.clone().try_acquire_many_owned(need) {
                Ok(permit) => permit,
                Err(_) => tokio::time::timeout(WAIT, room.acquire_many_owned(need))
                    .await
                    .map_err(|_| Exhausted)?
                    .map_err(|_| Exhausted)?,
            };
            match &mut held.permit {
                Some(p) => p.merge(permit),
                None => held.permit = Some(permit),
            }
        }
        held.bytes = total;
        Ok(())
    }

    /// KiB free now.
    pub fn available_kib(&self) -> usize {
        self.room.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_is_taken_as_bytes_arrive_and_given_back_on_drop() {
        let budget = AnswerBudget::new(4 * KIB);
        let mut a = Reservation::default();
        budget.reserve(&mut a, 100).await.unwrap();
        budget.reserve(&mut a, 900).await.unwrap();
        assert_eq!(budget.available_kib(), 3, "1000 bytes hold one KiB");
        budget.reserve(&mut a, 2 * KIB).await.unwrap();
        assert_eq!(budget.available_kib(), 1);
        let mut b = Reservation::default();
        assert_eq!(budget.reserve(&mut b, 2 * KIB).await, Err(Exhausted));
        drop(a);
        assert_eq!(budget.available_kib(), 4);
        budget.reserve(&mut b, 2 * KIB).await.unwrap();
    }

    #[tokio::test]
    async fn a_waiting_answer_gets_room_freed_meanwhile() {
        let budget = AnswerBudget::new(KIB);
        let mut a = Reservation::default();
        budget.reserve(&mut a, KIB).await.unwrap();
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut b = Reservation::default();
                budget.reserve(&mut b, KIB).await
            })
        };
        tokio::task::yield_now().await;
        drop(a);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }
}
