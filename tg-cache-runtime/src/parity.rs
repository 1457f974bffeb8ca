//! # Parity rules: one behaviour on every store
//!
//! Code that passes its tests on the default local store behaves the same on
//! Redis. The local store keeps values as they are (no serialization on the
//! hit path) and Redis keeps their JSON text, so tg-cache applies **JSON
//! semantics everywhere**: what reads on Redis reads locally, what fails on
//! Redis fails locally.
//!
//! * **Reads across types.** `get::<T>` of a value stored as another type
//!   `U` returns what Redis would return: the value's JSON read as a `T`
//!   (`set(&7i64)` then `get::<i32>` is `Some(7)` on both stores; a value
//!   whose JSON does not fit `T` is a miss, logged and counted as a decode
//!   error). Locally the JSON round trip happens only when the stored type
//!   is not `T`: the hit path stays a downcast.
//! * **`incr` / `decr`** work on any value whose JSON is an integer that
//!   fits an `i64` (an `i32`, a `u8`, a `Some(5)`, ...), and the arithmetic
//!   is exact over the whole `i64` range on both stores (Redis does it on
//!   decimal text, not on Lua's doubles). A result outside the `i64` range
//!   is [`Error::NotAnInteger`](crate::Error::NotAnInteger) and changes
//!   nothing; `decr(k, i64::MIN)` is exact. After an `incr` the local store
//!   holds an `i64` (reads of other integer types go through JSON, as above).
//! * **Values JSON cannot carry are refused at write time**, on every store,
//!   with [`Error::Encode`](crate::Error::Encode): `set`, `add` and
//!   `set_many` fail, and `get_or_set`, cached functions, views and
//!   fragments return the value without storing it (the failure is logged
//!   and counted in [`crate::CacheStats::errors`]). Refused are:
//!   - what serde_json cannot serialize, e.g. a map with non-string keys
//!     (`HashMap<(i32, i32), i32>`);
//!   - non-finite floats (`f64::INFINITY`, `NaN`, in any position):
//!     serde_json would write them as `null`, which reads back as a miss or
//!     as another value;
//!   - a `Some` whose content is written as JSON `null` (`Some(None)` of an
//!     `Option<Option<T>>`, `Some(())`, `Some` of a unit struct): JSON
//!     cannot tell it from `None`. `None` itself, and `Some(Some(x))`, are
//!     stored and read back exactly.
//!
//!   The local store checks this with one serialization into a sink that
//!   discards the bytes, on writes only; reads never serialize.
//! * **Timeouts, culling, expiry.** A value just written is readable at once,
//!   even when the local store is full (least-recently-used entries are
//!   evicted, never the new one); expired and invalidated (old-epoch) entries
//!   do not count against `max_entries`: they are swept out in the
//!   background (when the store is full, after an `invalidate_family`, and
//!   on [`Cache::local_len`](crate::Cache::local_len)), before any live
//!   entry is evicted for room. The local store's expiry clock is
//!   tg-cache's own, refreshed by a tg-cache thread every 10 ms: an entry may
//!   be served up to 10 ms past its deadline, and no other crate can stop it.
//! * **Namespaces.** With a `key_prefix`, keys are stored as Django stores
//!   them, `<prefix>:<version>:<key>`, the version being 1 unless set (so a
//!   cache without a version and one with `version(1)` are the same cache,
//!   as in Django). With a version but no prefix they are
//!   `:<version>:<key>` (Django's form with an empty prefix). With neither,
//!   keys are stored as given, and a key starting with `:` is refused (that
//!   form is a versioned cache's). A prefix may not contain `:`. So two
//!   caches that both have a prefix or a version never share a key. A cache
//!   with neither stores keys as given, so its key `app:1:answer` is the
//!   key `answer` of a `key_prefix("app")` cache: give every cache that
//!   shares a Redis database a prefix.
//! * **What JSON drops stays dropped.** A type whose JSON does not carry
//!   all of it (a `#[serde(skip_serializing)]` field without a default, a
//!   custom `Serialize` that loses data) reads back on Redis as JSON allows,
//!   or misses; the local store hands back the value as set. tg-cache does
//!   not round-trip every write to find out: test such types on Redis.

use serde::Serialize;
use serde::ser::{self, Error as _};

/// Checks that JSON carries `v` faithfully (the rules above), and that
/// serde_json can serialize it at all (into a sink: no allocation).
pub(crate) fn check<T: Serialize + ?Sized>(v: &T) -> serde_json::Result<usize> {
    check_lossless(v)?;
    let mut counted = Counted(0);
    serde_json::to_writer(&mut counted, v)?;
    Ok(counted.0)
}

/// A writer that only counts the bytes written to it.
struct Counted(usize);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The part of [`check`] serde_json does not do: no non-finite float, no
/// `Some` of something written as `null`.
pub(crate) fn check_lossless<T: Serialize + ?Sized>(v: &T) -> serde_json::Result<()> {
    v.serialize(Checker).map(drop)
}

/// A serializer that writes nothing. Its output is whether the value is
/// written as JSON `null`.
struct Checker;

type R = serde_json::Result<bool>;

fn non_finite() -> serde_json::Error {
    serde_json::Error::custom(
        "non-finite float (inf or NaN): JSON would store it as null; store a finite value or an Option",
    )
}

impl ser::Serializer for Checker {
    type Ok = bool;
    type Error = serde_json::Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, _: bool) -> R {
        Ok(false)
    }
    fn serialize_i8(self, _: i8) -> R {
        Ok(false)
    }
    fn serialize_i16(self, _: i16) -> R {
        Ok(false)
    }
    fn serialize_i32(self, _: i32) -> R {
        Ok(false)
    }
    fn serialize_i64(self, _: i64) -> R {
        Ok(false)
    }
    fn serialize_i128(self, _: i128) -> R {
        Ok(false)
    }
    fn serialize_u8(self, _: u8) -> R {
        Ok(false)
    }
    fn serialize_u16(self, _: u16) -> R {
        Ok(false)
    }
    fn serialize_u32(self, _: u32) -> R {
        Ok(false)
    }
    fn serialize_u64(self, _: u64) -> R {
        Ok(false)
    }
    fn serialize_u128(self, _: u128) -> R {
        Ok(false)
    }
    fn serialize_f32(self, v: f32) -> R {
        if v.is_finite() {
            Ok(false)
        } else {
            Err(non_finite())
        }
    }
    fn serialize_f64(self, v: f64) -> R {
        if v.is_finite() {
            Ok(false)
        } else {
            Err(non_finite())
        }
    }
    fn serialize_char(self, _: char) -> R {
        Ok(false)
    }
    fn serialize_str(self, _: &str) -> R {
        Ok(false)
    }
    fn serialize_bytes(self, _: &[u8]) -> R {
        Ok(false)
    }
    fn serialize_none(self) -> R {
        Ok(true)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> R {
        if v.serialize(Checker)? {
            return Err(serde_json::Error::custom(
                "`Some(x)` where x is written as JSON null (e.g. `Some(None)`, `Some(())`): JSON cannot tell it from `None`",
            ));
        }
        Ok(false)
    }
    fn serialize_unit(self) -> R {
        Ok(true)
    }
    fn serialize_unit_struct(self, _: &'static str) -> R {
        Ok(true)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
        Ok(false)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> R {
        v.serialize(Checker)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> R {
        v.serialize(Checker).map(|_| false)
    }
    fn serialize_seq(self, _: Option<usize>) -> serde_json::Result<Self> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> serde_json::Result<Self> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> serde_json::Result<Self> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> serde_json::Result<Self> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> serde_json::Result<Self> {
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> serde_json::Result<Self> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> serde_json::Result<Self> {
        Ok(self)
    }
}

fn walk<T: Serialize + ?Sized>(v: &T) -> serde_json::Result<()> {
    v.serialize(Checker).map(drop)
}

impl ser::SerializeSeq for Checker {
    type Ok = bool;
    type Error = serde_json::Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> serde_json::Result<()> {
        walk(v)
    }
    fn end(self) -> R {
        Ok(false)
    }
}

impl ser::SerializeTuple for Checker {
    type Ok = bool;
    type Error = serde_json::Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> serde_json::Result<()> {
        walk(v)
    }
    fn end(self) -> R {
        Ok(false)
    }
}

impl ser::SerializeTupleStruct for Checker {
    type Ok = bool;
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> serde_json::Result<()> {
        walk(v)
    }
    fn end(self) -> R {
        Ok(false)
    }
}

impl ser::SerializeTupleVariant for Checker {
    type Ok = bool;
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> serde_json::Result<()> {
        walk(v)
    }
    fn end(self) -> R {
        Ok(false)
    }
}

impl ser::SerializeMap for Checker {
    type Ok = bool;
    type Error = serde_json::Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> serde_json::Result<()> {
        walk(k)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> serde_json::Result<()> {
        walk(v)
    }
    fn end(self) -> R {
        Ok(false)
    }
}

impl ser::SerializeStruct for Checker {
    type Ok = bool;
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        v: &T,
    ) -> serde_json::Result<()> {
        walk(v)
    }
    fn end(self) -> R {
        Ok(false)
    }
}

impl ser::SerializeStructVariant for Checker {
    type Ok = bool;
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        v: &T,
    ) -> serde_json::Result<()> {
        walk(v)
    }
    fn end(self) -> R {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn refuses_what_json_loses() {
        assert!(check(&f64::INFINITY).is_err());
        assert!(check(&vec![1.0, f64::NAN]).is_err());
        assert!(check(&Some(f32::NEG_INFINITY)).is_err());
        assert!(check(&Some(None::<i32>)).is_err());
        assert!(check(&vec![Some(())]).is_err());
        let mut m = HashMap::new();
        m.insert((1, 2), 3);
        assert!(check(&m).is_err());
        assert!(check(&None::<Option<i32>>).is_ok());
        assert!(check(&Some(Some(1))).is_ok());
        assert!(check(&vec![None::<i32>, Some(2)]).is_ok());
        assert!(check(&(1.5f64, "x", u128::MAX, i128::MIN)).is_ok());
        assert!(check(&()).is_ok());
    }
}
