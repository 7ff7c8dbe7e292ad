//! How many ordinary peers of one task may read the origin themselves.
//!
//! Invariant: `granted() <= limit()` always; a grant is never returned, so a peer that failed
//! after reading the origin still counts (the origin saw its bytes).

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
    fn zero_limit_never_grants() {
        assert!(!BackToSourceBudget::new(0).try_grant());
    }
}
