//! The control thread's to-do list for the send connection: REQUESTs to
//! send and paths to bring in line with the server (upload, DELETE, or
//! nothing if they turn out unchanged). Each path is queued at most once
//! per kind; REQUESTs go first so the server's data starts flowing while
//! uploads are read from disk.

use std::collections::{HashSet, VecDeque};

/// One piece of work.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Job {
    /// Send a REQUEST for the path.
    Request(String),
    /// Look at the path and upload or DELETE it if it differs from the base.
    Sync(String),
}

/// FIFO queues without duplicates.
#[derive(Debug, Default)]
pub struct Jobs {
    requests: VecDeque<String>,
    syncs: VecDeque<String>,
    queued: HashSet<Job>,
}

impl Jobs {
    /// Queues a REQUEST (once).
    pub fn push_request(&mut self, name: String) {
        if self.queued.insert(Job::Request(name.clone())) {
            self.requests.push_back(name);
        }
    }

    /// Queues a sync of a path (once).
    pub fn push_sync(&mut self, name: String) {
        if self.queued.insert(Job::Sync(name.clone())) {
            self.syncs.push_back(name);
        }
    }

    /// The next job: REQUESTs first, then syncs, each in FIFO order.
    pub fn pop(&mut self) -> Option<Job> {
        let job = match self.requests.pop_front() {
            Some(name) => Job::Request(name),
            None => Job::Sync(self.syncs.pop_front()?),
        };
        self.queued.remove(&job);
        Some(job)
    }

    /// How many jobs are queued.
    pub fn len(&self) -> usize {
        self.requests.len() + self.syncs.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.syncs.is_empty()
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.requests.clear();
        self.syncs.clear();
        self.queued.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_first_fifo_no_duplicates() {
        let mut j = Jobs::default();
        j.push_sync("a".into());
        j.push_request("r".into());
        j.push_sync("b".into());
        j.push_sync("a".into());
        j.push_request("r".into());
        assert_eq!(j.pop(), Some(Job::Request("r".into())));
        assert_eq!(j.pop(), Some(Job::Sync("a".into())));
        // Once popped, a path may be queued again.
        j.push_sync("a".into());
        assert_eq!(j.pop(), Some(Job::Sync("b".into())));
        assert_eq!(j.pop(), Some(Job::Sync("a".into())));
        assert_eq!(j.pop(), None);
        assert!(j.is_empty());
    }
}
