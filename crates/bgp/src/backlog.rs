//! What is owed to one peer but not queued for it: prefixes changed while its
//! send queue was full, and walks over the table (the initial full sync, a
//! ROUTE-REFRESH) still under way. Memory stays bounded whatever the peer
//! does: the list of changed prefixes is capped (past the cap one walk over
//! the whole table replaces it) and refresh requests coalesce into at most
//! one pending walk per family. The Adj-RIB-Out diff turns each step into
//! exactly what the peer still needs, so a prefix listed twice costs a
//! lookup, not a message. Pure data, driven by the instance.

use crate::packet::capability::Family;
use crate::rib::{Walk, family_of};
use ipnet::IpNet;
use std::collections::VecDeque;

/// Most changed prefixes remembered one by one (18 bytes each); past this a
/// walk over the whole table stands in for them.
pub const DIRTY_MAX: usize = 65_536;

/// One walk over the table (or one family of it) for a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sweep {
    /// Where it stands.
    walk: Walk,
    /// The family walked; `None` = all.
    family: Option<Family>,
    /// Forget what the peer was sent of `family` before starting (a
    /// ROUTE-REFRESH asks for everything again).
    reset: bool,
    /// The first step was taken.
    started: bool,
    /// End-of-RIB markers to send once it is done.
    end_of_rib: Vec<Family>,
}

impl Sweep {
    fn new(family: Option<Family>, reset: bool, end_of_rib: Vec<Family>) -> Sweep {
        Sweep {
            walk: Walk::over(family),
            family,
            reset,
            started: false,
            end_of_rib,
        }
    }
}

/// The next piece of work for a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Sync these prefixes.
    Prefixes(Vec<IpNet>),
    /// Sync the next piece of a walk; first forget what the peer was sent
    /// of `reset` (a ROUTE-REFRESH). Report the walk's next position with
    /// [`Backlog::walked`].
    Walk {
        /// Where the walk stands.
        walk: Walk,
        /// Family whose Adj-RIB-Out to forget first.
        reset: Option<Family>,
    },
}

/// Work owed to one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Changed prefixes in the order they changed (repeats possible).
    dirty: Vec<IpNet>,
    /// How many of `dirty` were handed out already.
    taken: usize,
    sweeps: VecDeque<Sweep>,
}

impl Backlog {
    /// A session just came up: the whole table is owed, then an End-of-RIB
    /// for each of `families`.
    pub fn session_up(families: &[Family]) -> Backlog {
        Backlog {
            dirty: Vec::new(),
            taken: 0,
            sweeps: VecDeque::from([Sweep::new(None, false, families.to_vec())]),
        }
    }

    /// Nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.dirty.is_empty() && self.sweeps.is_empty()
    }

    /// Prefixes changed and could not be sent now.
    pub fn touch(&mut self, prefixes: &[IpNet]) {
        if self.dirty.len() + prefixes.len() > DIRTY_MAX {
            self.dirty = Vec::new();
            self.taken = 0;
            self.resync();
            return;
        }
        self.dirty.extend_from_slice(prefixes);
    }

    /// Everything must be compared again (an export policy changed, or too
    /// many prefixes changed to list).
    pub fn resync(&mut self) {
        if !self.sweeps.iter().any(|s| !s.started && s.family.is_none()) {
            self.sweeps.push_back(Sweep::new(None, false, Vec::new()));
        }
    }

    /// The peer asked for `family` again (ROUTE-REFRESH). Coalesced: while a
    /// request for it has not started, more requests add nothing. Returns
    /// whether new work was queued.
    pub fn refresh(&mut self, family: Family) -> bool {
        if self
            .sweeps
            .iter()
            .any(|s| !s.started && s.reset && s.family == Some(family))
        {
            return false;
        }
        self.sweeps
            .push_back(Sweep::new(Some(family), true, Vec::new()));
        true
    }

    /// The next step: up to `limit` changed prefixes, else the current
    /// walk's next piece; `None` when nothing is owed.
    pub fn next(&mut self, limit: usize) -> Option<Step> {
        if self.taken < self.dirty.len() {
            let end = (self.taken + limit).min(self.dirty.len());
            let v = self.dirty[self.taken..end].to_vec();
            self.taken = end;
            if end == self.dirty.len() {
                self.dirty = Vec::new();
                self.taken = 0;
            }
            return Some(Step::Prefixes(v));
        }
        let s = self.sweeps.front_mut()?;
        let reset = (!s.started && s.reset).then_some(s.family).flatten();
        s.started = true;
        Some(Step::Walk {
            walk: s.walk,
            reset,
        })
    }

    /// The walk of the last [`Step::Walk`] moved on to `next` (`None`: it is
    /// done). Returns the End-of-RIB markers now due.
    pub fn walked(&mut self, next: Option<Walk>) -> Vec<Family> {
        match (next, self.sweeps.front_mut()) {
            (Some(w), Some(s)) => {
                s.walk = w;
                Vec::new()
            }
            (None, Some(_)) => self
                .sweeps
                .pop_front()
                .map(|s| s.end_of_rib)
                .unwrap_or_default(),
            (_, None) => Vec::new(),
        }
    }

    /// Whether `prefix` is waiting in the list of changed prefixes (for
    /// tests and status).
    pub fn is_dirty(&self, prefix: &IpNet) -> bool {
        self.dirty[self.taken..].contains(prefix)
    }

    /// Walks queued or under way (for tests and status).
    pub fn walks(&self) -> usize {
        self.sweeps.len()
    }

    /// Families a pending walk covers (for tests).
    pub fn covers(&self, prefix: &IpNet) -> bool {
        self.sweeps
            .iter()
            .any(|s| s.family.is_none_or(|f| f == family_of(prefix)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn session_up_walks_everything_then_owes_end_of_rib() {
        let fams = [Family::Ipv4Unicast, Family::Ipv6Unicast];
        let mut b = Backlog::session_up(&fams);
        let Some(Step::Walk { walk, reset }) = b.next(10) else {
            panic!("{b:?}")
        };
        assert_eq!((walk, reset), (Walk::over(None), None));
        let half = Walk {
            after: Some(p("100.64.0.0/26")),
            end: None,
        };
        assert!(b.walked(Some(half)).is_empty());
        assert_eq!(
            b.next(10),
            Some(Step::Walk {
                walk: half,
                reset: None
            })
        );
        assert_eq!(b.walked(None), fams.to_vec());
        assert!(b.is_empty());
        assert_eq!(b.next(10), None);
    }

    #[test]
    fn dirty_prefixes_first_and_capped() {
        let mut b = Backlog::default();
        b.touch(&[p("100.64.0.0/26"), p("100.64.0.64/26"), p("100.64.0.0/26")]);
        assert!(b.is_dirty(&p("100.64.0.64/26")));
        assert_eq!(b.next(1), Some(Step::Prefixes(vec![p("100.64.0.0/26")])));
        // A walk queued meanwhile waits for the changed prefixes.
        b.resync();
        assert_eq!(
            b.next(5),
            Some(Step::Prefixes(vec![
                p("100.64.0.64/26"),
                p("100.64.0.0/26")
            ]))
        );
        assert!(!b.is_dirty(&p("100.64.0.0/26")));
        assert!(matches!(b.next(5), Some(Step::Walk { .. })));
        assert!(b.walked(None).is_empty());
        assert!(b.is_empty());
        // Too many to list: one walk over everything instead, only once.
        let many: Vec<IpNet> = (0..=DIRTY_MAX as u32)
            .map(|i| IpNet::V4(ipnet::Ipv4Net::new((0x6440_0000 + i).into(), 32).unwrap()))
            .collect();
        b.touch(&many);
        b.touch(&many);
        assert!(!b.is_dirty(&many[0]));
        assert_eq!(b.walks(), 1);
        assert!(b.covers(&p("2001:db8::/64")));
    }

    #[test]
    fn refresh_requests_coalesce() {
        let mut b = Backlog::default();
        assert!(b.refresh(Family::Ipv4Unicast));
        for _ in 0..1000 {
            assert!(!b.refresh(Family::Ipv4Unicast));
        }
        assert_eq!(b.walks(), 1);
        assert!(b.covers(&p("100.64.0.0/26")));
        assert!(!b.covers(&p("2001:db8::/64")));
        // Once it started, one more may queue behind it, and no more.
        let Some(Step::Walk { reset, .. }) = b.next(10) else {
            panic!()
        };
        assert_eq!(reset, Some(Family::Ipv4Unicast));
        assert!(b.refresh(Family::Ipv4Unicast));
        assert!(!b.refresh(Family::Ipv4Unicast));
        assert_eq!(b.walks(), 2);
        // The next piece of a started walk resets nothing.
        let Some(Step::Walk { reset, .. }) = b.next(10) else {
            panic!()
        };
        assert_eq!(reset, None);
        assert!(b.walked(None).is_empty());
        let Some(Step::Walk { reset, .. }) = b.next(10) else {
            panic!()
        };
        assert_eq!(reset, Some(Family::Ipv4Unicast));
    }
}
