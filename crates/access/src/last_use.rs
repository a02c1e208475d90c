//! When and from where each API key last authenticated.
//!
//! Kept apart from the key records on purpose: the records change only when
//! an admin changes a key (and may live in a shared store), while this
//! changes on every call. It is in memory, written to its own file
//! (`apikeys.lastuse.json`) every few seconds and at shutdown by the
//! server, and per replica: each replica knows the uses it served.
//!
//! The hot path takes no lock that another caller of the same key waits
//! on: a key's slot is found in one of [`SHARDS`] maps under a brief shared
//! read lock (a write lock only for a key's first use on this replica), and
//! the slot is updated with atomics, at most once a second per key — a
//! compare-and-swap on the claimed second elects the one writer; everyone
//! else returns at once.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering, fence};
use std::sync::{Arc, RwLock};

/// How many maps the slots are spread over.
pub const SHARDS: usize = 16;

/// A key's uses are recorded at most this often.
pub const RESOLUTION_MS: u64 = 1000;

/// A key's last successful authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Use {
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// The caller's source address, if known.
    pub source: Option<IpAddr>,
}

/// One key's last use, as atomics guarded by a sequence number (a seqlock):
/// readers retry while a write is under way instead of locking.
#[derive(Debug, Default)]
struct Slot {
    /// The start of the second whose use was last recorded (the throttle).
    claimed_ms: AtomicU64,
    /// Odd while the fields below are being written.
    seq: AtomicU64,
    at_ms: AtomicU64,
    /// 0: no source, 4: IPv4 in `lo`, 6: IPv6 in `hi`:`lo`.
    family: AtomicU8,
    hi: AtomicU64,
    lo: AtomicU64,
}

impl Slot {
    fn write(&self, u: Use) {
        let (family, hi, lo) = match u.source {
            None => (0, 0, 0),
            Some(IpAddr::V4(v4)) => (4, 0, u64::from(u32::from(v4))),
            Some(IpAddr::V6(v6)) => {
                let bits = u128::from(v6);
                (6, (bits >> 64) as u64, bits as u64)
            }
        };
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.at_ms.store(u.at_ms, Ordering::Relaxed);
        self.family.store(family, Ordering::Relaxed);
        self.hi.store(hi, Ordering::Relaxed);
        self.lo.store(lo, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    fn read(&self) -> Option<Use> {
        // A bounded retry: a torn read of last-use metadata is harmless, a
        // reader spinning for ever is not.
        for _ in 0..64 {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let at_ms = self.at_ms.load(Ordering::Relaxed);
            let family = self.family.load(Ordering::Relaxed);
            let hi = self.hi.load(Ordering::Relaxed);
            let lo = self.lo.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != before {
                continue;
            }
            if at_ms == 0 {
                return None;
            }
            let source = match family {
                4 => Some(IpAddr::V4(Ipv4Addr::from(lo as u32))),
                6 => Some(IpAddr::V6(Ipv6Addr::from(
                    (u128::from(hi) << 64) | u128::from(lo),
                ))),
                _ => None,
            };
            return Some(Use { at_ms, source });
        }
        None
    }
}

/// Every key's last use on this replica; see the module docs.
#[derive(Debug)]
pub struct LastUse {
    shards: [RwLock<HashMap<String, Arc<Slot>>>; SHARDS],
    /// Whether anything changed since the last flush.
    dirty: AtomicBool,
}

impl Default for LastUse {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| RwLock::default()),
            dirty: AtomicBool::new(false),
        }
    }
}

impl LastUse {
    /// The uses recorded in `path` (none if it does not exist). The error
    /// says why the file could not be read; last use informs people and
    /// never decides access, so a caller may start empty instead.
    pub fn load(path: &Path) -> Result<Self, String> {
        let uses: BTreeMap<String, Use> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let this = Self::default();
        for (id, u) in uses {
            let slot = this.slot(&id);
            slot.claimed_ms
                .store(u.at_ms - u.at_ms % RESOLUTION_MS, Ordering::Relaxed);
            slot.write(u);
        }
        Ok(this)
    }

    fn shard(&self, id: &str) -> &RwLock<HashMap<String, Arc<Slot>>> {
        let h = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        &self.shards[(h % SHARDS as u64) as usize]
    }

    fn slot(&self, id: &str) -> Arc<Slot> {
        let shard = self.shard(id);
        if let Some(slot) = shard.read().expect("lock").get(id) {
            return Arc::clone(slot);
        }
        let mut map = shard.write().expect("lock");
        Arc::clone(map.entry(id.to_owned()).or_default())
    }

    /// Notes that key `id` authenticated from `source` at `now_ms`; a no-op
    /// if its use in this second is already recorded.
    pub fn touch(&self, id: &str, source: Option<IpAddr>, now_ms: u64) {
        let slot = self.slot(id);
        let second = now_ms - now_ms % RESOLUTION_MS;
        let claimed = slot.claimed_ms.load(Ordering::Relaxed);
        if second <= claimed
            || slot
                .claimed_ms
                .compare_exchange(claimed, second, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        slot.write(Use {
            at_ms: now_ms,
            source,
        });
        self.dirty.store(true, Ordering::Release);
    }

    /// Key `id`'s last use, if this replica has seen one.
    pub fn get(&self, id: &str) -> Option<Use> {
        let slot = Arc::clone(self.shard(id).read().expect("lock").get(id)?);
        slot.read()
    }

    /// Every recorded use, by key id.
    pub fn snapshot(&self) -> BTreeMap<String, Use> {
        let mut all = BTreeMap::new();
        for shard in &self.shards {
            let slots: Vec<(String, Arc<Slot>)> = shard
                .read()
                .expect("lock")
                .iter()
                .map(|(id, slot)| (id.clone(), Arc::clone(slot)))
                .collect();
            all.extend(
                slots
                    .into_iter()
                    .filter_map(|(id, slot)| Some((id, slot.read()?))),
            );
        }
        all
    }

    /// Writes every use to `path` (atomically, mode 0600) if any changed
    /// since the last flush; returns whether it wrote.
    pub fn flush(&self, path: &Path) -> std::io::Result<bool> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let bytes = serde_json::to_vec_pretty(&self.snapshot()).expect("uses serialise");
        valet_durable::write_atomically(path, &bytes).inspect_err(|_| {
            // Try again at the next flush.
            self.dirty.store(true, Ordering::Release);
        })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn at_most_one_record_a_second_and_flushed_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apikeys.lastuse.json");
        let uses = LastUse::default();
        assert_eq!(uses.get("key_a"), None);
        uses.touch("key_a", ip("10.1.2.3"), 5_000);
        uses.touch("key_a", ip("10.9.9.9"), 5_999);
        assert_eq!(
            uses.get("key_a"),
            Some(Use {
                at_ms: 5_000,
                source: ip("10.1.2.3")
            })
        );
        uses.touch("key_a", ip("fd00::7"), 6_000);
        uses.touch("key_b", None, 6_500);
        assert_eq!(uses.get("key_a").unwrap().source, ip("fd00::7"));
        assert_eq!(uses.get("key_b").unwrap().source, None);

        assert!(uses.flush(&path).unwrap());
        assert!(!uses.flush(&path).unwrap(), "nothing changed since");
        let reloaded = LastUse::load(&path).unwrap();
        assert_eq!(reloaded.snapshot(), uses.snapshot());
        // A reloaded second is not recorded twice.
        reloaded.touch("key_a", ip("10.0.0.1"), 6_001);
        assert_eq!(reloaded.get("key_a").unwrap().source, ip("fd00::7"));
    }

    #[test]
    fn a_corrupt_file_is_reported_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apikeys.lastuse.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(LastUse::load(&path).is_err());
        let missing = dir.path().join("none.json");
        assert!(LastUse::load(&missing).unwrap().snapshot().is_empty());
    }

    #[test]
    fn concurrent_touches_of_one_key_record_one_use_per_second() {
        let uses = Arc::new(LastUse::default());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let uses = Arc::clone(&uses);
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        uses.touch("key_x", Some(IpAddr::from([10, 0, 0, t])), 10_000 + i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = uses.get("key_x").unwrap();
        assert!(got.at_ms >= 10_000 && got.at_ms < 11_000, "{got:?}");
        assert!(matches!(got.source, Some(IpAddr::V4(v4)) if v4.octets()[..3] == [10, 0, 0]));
    }
}
