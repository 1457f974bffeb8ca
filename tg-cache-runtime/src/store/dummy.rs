//! The dummy store (Django's `DummyCache`): keeps nothing, every read misses.

use super::Write;
use super::local::check;
use super::{
    Family, Filled, Incr, Lease, LeaseMode, LeaseOutcome, Slot, Store, StoreFuture, Stored, Value,
    ready,
};
use crate::generation::Epoch;
use crate::timeout::Ttl;
use std::time::Duration;

pub(crate) struct DummyStore;

impl Store for DummyStore {
    fn keeps_values(&self) -> bool {
        false
    }

    fn get<'a>(&'a self, _: &'a Slot) -> StoreFuture<'a, Option<Stored>> {
        ready(Ok(None))
    }
    fn get_many<'a>(&'a self, slots: &'a [Slot]) -> StoreFuture<'a, Vec<Option<Stored>>> {
        ready(Ok(slots.iter().map(|_| None).collect()))
    }
    // Values are checked as other stores check them (crate::parity), so
    // code tested with the dummy store fails the same way elsewhere.
    fn set<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        _: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        ready(check(slot, value, usize::MAX))
    }
    fn set_many<'a>(&'a self, items: &'a [Write<'a>]) -> StoreFuture<'a, ()> {
        ready(
            items
                .iter()
                .try_for_each(|w| check(&w.slot, w.value, usize::MAX)),
        )
    }
    fn add<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        _: Option<Duration>,
    ) -> StoreFuture<'a, bool> {
        ready(check(slot, value, usize::MAX).map(|()| true))
    }
    fn lease<'a>(
        &'a self,
        _: &'a Slot,
        token: &'a str,
        _: LeaseMode,
        _: Option<Duration>,
    ) -> StoreFuture<'a, LeaseOutcome> {
        ready(Ok(LeaseOutcome::Granted(Lease {
            token: token.to_owned(),
            epoch: Epoch::None,
            refresh: false,
        })))
    }
    fn renew<'a>(&'a self, _: &'a Slot, _: &'a Lease) -> StoreFuture<'a, bool> {
        ready(Ok(true))
    }
    fn fill<'a>(
        &'a self,
        slot: &'a Slot,
        value: &'a dyn Value,
        _: Option<Duration>,
        _: &'a Lease,
    ) -> StoreFuture<'a, Filled> {
        ready(check(slot, value, usize::MAX).map(|()| Filled::Dropped))
    }
    fn release<'a>(&'a self, _: &'a Slot, _: &'a Lease) -> StoreFuture<'a, bool> {
        ready(Ok(true))
    }
    fn delete<'a>(&'a self, _: &'a [String]) -> StoreFuture<'a, usize> {
        ready(Ok(0))
    }
    fn delete_pattern<'a>(&'a self, _: &'a str) -> StoreFuture<'a, usize> {
        ready(Ok(0))
    }
    fn clear<'a>(&'a self, _: &'a str) -> StoreFuture<'a, ()> {
        ready(Ok(()))
    }
    fn flush<'a>(&'a self) -> StoreFuture<'a, ()> {
        ready(Ok(()))
    }
    fn bump<'a>(&'a self, _: &'a Family) -> StoreFuture<'a, ()> {
        ready(Ok(()))
    }
    fn incr<'a>(&'a self, _: &'a Slot, _: i128) -> StoreFuture<'a, Incr> {
        ready(Ok(Incr::Missing))
    }
    fn touch<'a>(&'a self, _: &'a Slot, _: Option<Duration>) -> StoreFuture<'a, bool> {
        ready(Ok(false))
    }
    fn ttl<'a>(&'a self, _: &'a Slot) -> StoreFuture<'a, Option<Ttl>> {
        ready(Ok(None))
    }
    fn scan<'a>(
        &'a self,
        _: &'a str,
        _: super::ScanAt,
    ) -> StoreFuture<'a, (Vec<String>, Option<super::ScanAt>)> {
        ready(Ok((Vec::new(), None)))
    }

    fn ping<'a>(&'a self) -> StoreFuture<'a, ()> {
        ready(Ok(()))
    }
}
