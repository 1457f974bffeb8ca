//! The store of a cache whose configuration was invalid: every call returns
//! the configuration error (cached functions still run their bodies).

use super::{
    Family, Filled, Incr, Lease, LeaseMode, LeaseOutcome, Slot, Store, StoreFuture, Stored, Value,
};
use crate::error::{ConfigError, Error};
use crate::timeout::Ttl;
use std::time::Duration;

pub(crate) struct BrokenStore(pub(crate) ConfigError);

impl BrokenStore {
    fn fail<'a, T: Send + 'a>(&self) -> StoreFuture<'a, T> {
        super::ready(Err(Error::Config(self.0.clone())))
    }
}

impl Store for BrokenStore {
    fn get<'a>(&'a self, _: &'a Slot) -> StoreFuture<'a, Option<Stored>> {
        self.fail()
    }
    fn get_many<'a>(&'a self, _: &'a [Slot]) -> StoreFuture<'a, Vec<Option<Stored>>> {
        self.fail()
    }
    fn set<'a>(
        &'a self,
        _: &'a Slot,
        _: &'a dyn Value,
        _: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        self.fail()
    }
    fn set_many<'a>(
        &'a self,
        _: &'a [(Slot, &'a dyn Value)],
        _: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        self.fail()
    }
    fn add<'a>(
        &'a self,
        _: &'a Slot,
        _: &'a dyn Value,
        _: Option<Duration>,
    ) -> StoreFuture<'a, bool> {
        self.fail()
    }
    fn lease<'a>(
        &'a self,
        _: &'a Slot,
        _: &'a str,
        _: LeaseMode,
        _: Option<Duration>,
    ) -> StoreFuture<'a, LeaseOutcome> {
        self.fail()
    }
    fn renew<'a>(&'a self, _: &'a Slot, _: &'a Lease) -> StoreFuture<'a, bool> {
        self.fail()
    }
    fn fill<'a>(
        &'a self,
        _: &'a Slot,
        _: &'a dyn Value,
        _: Option<Duration>,
        _: &'a Lease,
    ) -> StoreFuture<'a, Filled> {
        self.fail()
    }
    fn release<'a>(&'a self, _: &'a Slot, _: &'a Lease) -> StoreFuture<'a, bool> {
        self.fail()
    }
    fn delete<'a>(&'a self, _: &'a [String]) -> StoreFuture<'a, usize> {
        self.fail()
    }
    fn delete_pattern<'a>(&'a self, _: &'a str) -> StoreFuture<'a, usize> {
        self.fail()
    }
    fn clear<'a>(&'a self, _: &'a str) -> StoreFuture<'a, ()> {
        self.fail()
    }
    fn flush<'a>(&'a self) -> StoreFuture<'a, ()> {
        self.fail()
    }
    fn bump<'a>(&'a self, _: &'a Family) -> StoreFuture<'a, ()> {
        self.fail()
    }
    fn incr<'a>(&'a self, _: &'a Slot, _: i128) -> StoreFuture<'a, Incr> {
        self.fail()
    }
    fn touch<'a>(&'a self, _: &'a Slot, _: Option<Duration>) -> StoreFuture<'a, bool> {
        self.fail()
    }
    fn ttl<'a>(&'a self, _: &'a Slot) -> StoreFuture<'a, Option<Ttl>> {
        self.fail()
    }
    fn ping<'a>(&'a self) -> StoreFuture<'a, ()> {
        self.fail()
    }
}
