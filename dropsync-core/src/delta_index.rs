//! [ext] META-DATA since a version, the server's half (issue 19, B8: a
//! client of a million files that reconnects with nothing changed should
//! not be sent, nor read, a million lines). `dropsync_proto::index` has the
//! lines and names; docs/PROTOCOL.md, "META-DATA since a version", the
//! exchange.
//!
//! Which listing each client id acknowledged, in memory: after a restart
//! of the server every client is sent every path once again, and the store
//! id, made anew at each start, tells a client that its saved state is of
//! another table.

use std::collections::HashMap;
use std::time::Duration;

use dropsync_proto::index::{Listing, StoreId};
use dropsync_proto::ClientId;

/// Whether a client whose saved state reflects the listing `saved` (with
/// the lines where the server differed from its bases then) can read the
/// delta `got` against it: of the same store, and starting no later than
/// the saved listing. A path the delta leaves out is then on the server as
/// it was at the saved listing, which the saved state knows; a delta that
/// starts later would leave out changes the client never had.
pub fn delta_usable(saved: &Listing, got: &Listing) -> bool {
    got.since.is_some_and(|since| got.store == saved.store && since <= saved.upto)
}

/// Least time between two listings of what changed that one session is
/// sent on its asking (`/more`): each is a pass over the server's table.
pub const MIN_MORE_SPACING: Duration = Duration::from_secs(5);

/// Client ids remembered at most: beyond, the one acknowledged longest ago
/// is forgotten (it is then sent every path, as before this extension). A
/// peer that makes up ids costs the others a full listing, nothing more.
pub const MAX_ACKS: usize = 65_536;

/// The listing each client id acknowledged last.
#[derive(Debug)]
pub struct Acks {
    store: StoreId,
    /// Client id → (the `upto` it acknowledged, when: a sequence number).
    by_client: HashMap<ClientId, (u64, u64)>,
    next_seq: u64,
    cap: usize,
}

impl Acks {
    /// An empty table of the store `store`.
    pub fn new(store: StoreId) -> Self {
        Self::with_cap(store, MAX_ACKS)
    }

    /// An empty table that remembers `cap` client ids at most.
    pub fn with_cap(store: StoreId, cap: usize) -> Self {
        Self { store, by_client: HashMap::new(), next_seq: 0, cap: cap.max(1) }
    }

    /// The store id the listings name.
    pub fn store(&self) -> StoreId {
        self.store
    }

    /// The version to list `client` the changes since, if it acknowledged a
    /// listing of this store.
    pub fn since(&self, client: &ClientId) -> Option<u64> {
        self.by_client.get(client).map(|&(upto, _)| upto)
    }

    /// `client` acknowledged the listing of `store` up to `upto`; `listed`
    /// is the `upto` of the listing its session was sent. Taken (true) only
    /// when it is that listing: a client acknowledges only what it was
    /// sent, and only once its state reflects it.
    pub fn acknowledge(&mut self, client: ClientId, store: StoreId, upto: u64, listed: u64) -> bool {
        if store != self.store || upto != listed {
            return false;
        }
        self.next_seq += 1;
        self.by_client.insert(client, (upto, self.next_seq));
        if self.by_client.len() > self.cap {
            let oldest = self.by_client.iter().min_by_key(|(_, &(_, seq))| seq).map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.by_client.remove(&id);
            }
        }
        true
    }

    /// `client` cannot use a listing since a version (its state is not the
    /// one it acknowledged): it is sent every path next time.
    pub fn forget(&mut self, client: &ClientId) {
        self.by_client.remove(client);
    }

    /// Client ids remembered.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// True when no client acknowledged anything.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_delta_is_read_only_against_a_state_of_its_store_saved_no_earlier_than_its_start() {
        let saved = Listing { store: [1; 16], upto: 10, since: None };
        let delta = |store, since| Listing { store, upto: 20, since };
        assert!(delta_usable(&saved, &delta([1; 16], Some(10))));
        assert!(delta_usable(&saved, &delta([1; 16], Some(4))), "more than needed");
        assert!(!delta_usable(&saved, &delta([1; 16], Some(11))), "changes 11 missing");
        assert!(!delta_usable(&saved, &delta([2; 16], Some(10))), "another store");
        assert!(!delta_usable(&saved, &delta([1; 16], None)), "not a delta");
    }

    #[test]
    fn only_the_listing_sent_of_this_store_is_taken() {
        let mut acks = Acks::new([1; 16]);
        assert_eq!(acks.since(&[9; 16]), None);
        assert!(!acks.acknowledge([9; 16], [2; 16], 5, 5), "another store");
        assert!(!acks.acknowledge([9; 16], [1; 16], 6, 5), "not the listing sent");
        assert_eq!(acks.since(&[9; 16]), None);
        assert!(acks.acknowledge([9; 16], [1; 16], 5, 5));
        assert_eq!(acks.since(&[9; 16]), Some(5));
        assert!(acks.acknowledge([9; 16], [1; 16], 8, 8));
        assert_eq!(acks.since(&[9; 16]), Some(8));
        acks.forget(&[9; 16]);
        assert_eq!(acks.since(&[9; 16]), None);
    }

    #[test]
    fn beyond_the_cap_the_oldest_acknowledgement_goes() {
        let mut acks = Acks::with_cap([1; 16], 2);
        acks.acknowledge([1; 16], [1; 16], 1, 1);
        acks.acknowledge([2; 16], [1; 16], 2, 2);
        acks.acknowledge([1; 16], [1; 16], 3, 3);
        acks.acknowledge([3; 16], [1; 16], 4, 4);
        assert_eq!(acks.len(), 2);
        assert_eq!(acks.since(&[2; 16]), None, "acknowledged longest ago");
        assert_eq!(acks.since(&[1; 16]), Some(3));
        assert_eq!(acks.since(&[3; 16]), Some(4));
    }

    proptest! {
        /// Whatever the acknowledgements, the table stays within its cap
        /// and each remembered id answers the last listing it acknowledged.
        #[test]
        fn within_the_cap_and_the_last_ack_answers(
            cap in 1usize..6,
            acks_in in prop::collection::vec((0u8..10, 0u64..100, any::<bool>()), 0..60),
        ) {
            let mut acks = Acks::with_cap([7; 16], cap);
            let mut last: HashMap<u8, u64> = HashMap::new();
            for (id, upto, forget) in acks_in {
                if forget {
                    acks.forget(&[id; 16]);
                    last.remove(&id);
                } else {
                    prop_assert!(acks.acknowledge([id; 16], [7; 16], upto, upto));
                    last.insert(id, upto);
                }
                prop_assert!(acks.len() <= cap);
            }
            for id in 0u8..10 {
                if let Some(v) = acks.since(&[id; 16]) {
                    prop_assert_eq!(Some(&v), last.get(&id));
                }
            }
        }
    }
}
