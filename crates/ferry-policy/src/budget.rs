//! How many ordinary peers of one task may read the origin themselves at once.
//!
//! Invariant: `granted() <= limit()` always. A grant is held while its peer reads and given
//! back when the peer finishes, fails or leaves: a peer that left must not keep the task's
//! only permission (a later peer would wait forever for a seed that does not exist).

#[derive(Clone, Debug)]
pub struct BackToSourceBudget {
    limit: u32,
    granted: u32,
}

impl BackToSourceBudget {
    pub fn new(limit: u32) -> Self {
        Self { limit, granted: 0 }
    }

    pub fn try_grant(&mut self) -> bool {
        if self.granted < self.limit {
            self.granted += 1;
            true
        } else {
            false
        }
    }

    /// Gives one grant back.
    pub fn release(&mut self) {
        self.granted = self.granted.saturating_sub(1);
    }

    pub fn granted(&self) -> u32 {
        self.granted
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_at_most_the_limit() {
        let mut b = BackToSourceBudget::new(2);
        assert!(b.try_grant());
        assert!(b.try_grant());
        assert!(!b.try_grant());
        assert_eq!(b.granted(), 2);
    }

    #[test]
    fn a_released_grant_can_be_given_again() {
        let mut b = BackToSourceBudget::new(1);
        assert!(b.try_grant());
        assert!(!b.try_grant());
        b.release();
        assert!(b.try_grant());
        b.release();
        b.release();
        assert_eq!(b.granted(), 0, "releasing more than was granted never underflows");
    }

    #[test]
    fn zero_limit_never_grants() {
        assert!(!BackToSourceBudget::new(0).try_grant());
    }
}
