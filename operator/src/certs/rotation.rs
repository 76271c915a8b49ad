//! The rotation machinery every certificate the operator keeps goes through: from what is stored
//! and the time, a plan (what should exist that does not); the plan carried out, one change at a
//! time, into what to store next; the trust bundle that state implies; and when the plan could
//! next change, so the shell sleeps until then. All of it pure: the async shells around it only
//! read the stored state, write the result, and wait.
//!
//! What differs between users (which certificates, their lifetimes, whether one is a CA or a
//! leaf, what a rollover waits for) is the [`Rotation`] each implements; the order of the steps
//! and what they may assume about each other is here.

use std::fmt::Debug;

/// What one pass planned, and what to store after it.
pub type Step<R> = (Vec<<R as Rotation>::Change>, <R as Rotation>::Stored);

/// One user's certificates: its policy, for given settings (and whatever else its plan reads,
/// such as when a bundle was last published), as a value.
pub trait Rotation {
    /// What is kept between passes (in Secrets).
    type Stored: Clone;
    /// One thing to do, with its reason for the log.
    type Change: Debug;
    type Error;

    /// What to do now, in order. Empty when everything that should exist does.
    fn plan(&self, now: i64, stored: &Self::Stored) -> Vec<Self::Change>;

    /// Carries out one change on `next`, which holds every earlier change of the same plan;
    /// new keys and certificates are valid from `now`.
    fn apply_change(
        &self,
        now: i64,
        next: &mut Self::Stored,
        change: &Self::Change,
    ) -> Result<(), Self::Error>;

    /// The certificates peers must trust for what `stored` holds, PEM.
    fn bundle(stored: &Self::Stored) -> String;

    /// Every time at which the plan could change (renewals, propagation ends, expiries), past
    /// ones included.
    fn deadlines(&self, stored: &Self::Stored) -> Vec<i64>;

    /// Carries out `changes`, in order, on a copy of `stored`.
    fn apply(
        &self,
        now: i64,
        stored: &Self::Stored,
        changes: &[Self::Change],
    ) -> Result<Self::Stored, Self::Error> {
        let mut next = stored.clone();
        for change in changes {
            self.apply_change(now, &mut next, change)?;
        }
        Ok(next)
    }

    /// When the plan could next change: the earliest deadline after `now`.
    fn next_change(&self, now: i64, stored: &Self::Stored) -> Option<i64> {
        self.deadlines(stored).into_iter().filter(|t| *t > now).min()
    }

    /// One pass: the plan, and what to store after it (`stored` itself when nothing is due, so
    /// a pass with nothing to do generates nothing).
    fn step(&self, now: i64, stored: &Self::Stored) -> Result<Step<Self>, Self::Error> {
        let changes = self.plan(now, stored);
        let next = if changes.is_empty() { stored.clone() } else { self.apply(now, stored, &changes)? };
        Ok((changes, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter that must be renewed every `period`: the least a rotation can be.
    struct Every {
        period: i64,
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Change {
        Renew,
        Fail,
    }

    impl Rotation for Every {
        type Stored = Vec<i64>;
        type Change = Change;
        type Error = String;

        fn plan(&self, now: i64, stored: &Vec<i64>) -> Vec<Change> {
            match stored.last() {
                Some(at) if now < at + self.period => vec![],
                _ => vec![Change::Renew],
            }
        }

        fn apply_change(&self, now: i64, next: &mut Vec<i64>, change: &Change) -> Result<(), String> {
            match change {
                Change::Renew => next.push(now),
                Change::Fail => return Err(format!("failed after {next:?}")),
            }
            Ok(())
        }

        fn bundle(stored: &Vec<i64>) -> String {
            stored.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
        }

        fn deadlines(&self, stored: &Vec<i64>) -> Vec<i64> {
            stored.iter().map(|at| at + self.period).collect()
        }
    }

    #[test]
    fn changes_apply_in_order_each_seeing_the_earlier_ones() {
        let every = Every { period: 10 };
        let next = every.apply(5, &vec![1], &[Change::Renew, Change::Renew]).unwrap();
        assert_eq!(next, [1, 5, 5]);
        let err = every.apply(5, &vec![1], &[Change::Renew, Change::Fail, Change::Renew]).unwrap_err();
        assert_eq!(err, "failed after [1, 5]", "a failed change stops the pass");
    }

    #[test]
    fn the_next_change_is_the_earliest_deadline_still_ahead() {
        let every = Every { period: 10 };
        assert_eq!(every.next_change(0, &vec![]), None);
        assert_eq!(every.next_change(12, &vec![1, 5, 9]), Some(15));
        assert_eq!(every.next_change(19, &vec![1, 5, 9]), None, "deadlines now or past are due, not ahead");
    }

    #[test]
    fn a_pass_with_nothing_due_keeps_what_is_stored() {
        let every = Every { period: 10 };
        let (changes, stored) = every.step(100, &vec![]).unwrap();
        assert_eq!((changes, stored.clone()), (vec![Change::Renew], vec![100]));
        assert_eq!(every.step(109, &stored).unwrap(), (vec![], vec![100]));
        assert_eq!(every.step(110, &stored).unwrap().1, [100, 110]);
        assert_eq!(Every::bundle(&vec![100, 110]), "100,110");
    }
}
