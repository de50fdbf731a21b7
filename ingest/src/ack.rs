//! Releasing MQTT acknowledgements in receive order although Kafka confirms out of order.
//!
//! MQTT requires a client to send QoS 1 PUBACKs in the order the PUBLISHes arrived. Ingest
//! acknowledges a message only once Kafka confirmed every record made from it, and those
//! confirmations complete in any order, so each message takes a sequence number on arrival and
//! is released only when it and every message before it are confirmed.

use std::collections::VecDeque;

/// Items waiting for their acknowledgement, in arrival order.
#[derive(Debug)]
pub struct InOrderAcks<T> {
    /// Sequence number of the front slot.
    front_seq: u64,
    slots: VecDeque<Slot<T>>,
}

#[derive(Debug)]
struct Slot<T> {
    item: T,
    confirmed: bool,
}

impl<T> Default for InOrderAcks<T> {
    fn default() -> Self {
        InOrderAcks {
            front_seq: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> InOrderAcks<T> {
    /// Records an arrival; returns its sequence number.
    pub fn push(&mut self, item: T) -> u64 {
        let seq = self.front_seq + self.slots.len() as u64;
        self.slots.push_back(Slot {
            item,
            confirmed: false,
        });
        seq
    }

    /// Marks `seq` confirmed. Unknown or already released numbers are ignored.
    pub fn confirm(&mut self, seq: u64) {
        if let Some(i) = seq.checked_sub(self.front_seq) {
            if let Some(slot) = self.slots.get_mut(i as usize) {
                slot.confirmed = true;
            }
        }
    }

    /// The next item whose acknowledgement may go out now, if any.
    pub fn pop_ready(&mut self) -> Option<T> {
        if self.slots.front()?.confirmed {
            self.front_seq += 1;
            self.slots.pop_front().map(|s| s.item)
        } else {
            None
        }
    }

    /// Messages received and not yet released.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(acks: &mut InOrderAcks<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| acks.pop_ready()).collect()
    }

    #[test]
    fn releases_in_arrival_order_whatever_the_confirmation_order() {
        let mut acks = InOrderAcks::default();
        let a = acks.push("a");
        let b = acks.push("b");
        let c = acks.push("c");
        acks.confirm(c);
        assert!(drain(&mut acks).is_empty(), "c waits for a and b");
        acks.confirm(a);
        assert_eq!(drain(&mut acks), vec!["a"]);
        acks.confirm(b);
        assert_eq!(drain(&mut acks), vec!["b", "c"]);
        assert!(acks.is_empty());
    }

    #[test]
    fn sequence_numbers_keep_counting_after_releases() {
        let mut acks = InOrderAcks::default();
        let a = acks.push("a");
        acks.confirm(a);
        assert_eq!(drain(&mut acks), vec!["a"]);
        let b = acks.push("b");
        assert_eq!(b, 1);
        acks.confirm(a); // stale: ignored
        assert!(drain(&mut acks).is_empty());
        acks.confirm(b);
        assert_eq!(drain(&mut acks), vec!["b"]);
    }

    #[test]
    fn many_random_confirmations_release_everything_in_order() {
        let mut acks = InOrderAcks::default();
        let n = 1000u64;
        let seqs: Vec<u64> = (0..n).map(|i| acks.push(i)).collect();
        let mut order = seqs.clone();
        // Deterministic shuffle.
        let mut s = 12345u64;
        for i in (1..order.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            order.swap(i, (s >> 33) as usize % (i + 1));
        }
        let mut released = Vec::new();
        for seq in order {
            acks.confirm(seq);
            released.extend(std::iter::from_fn(|| acks.pop_ready()));
        }
        assert_eq!(released, (0..n).collect::<Vec<_>>());
    }
}
