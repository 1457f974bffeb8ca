//! Cache keys: escaping, the seed's `CacheKeyGenerator`, long keys, and safe patterns.
//!
//! # Escaping rules
//!
//! Every *value* written into a key goes through [`KeyPart`], which guarantees:
//!
//! * **Injective**: two different values of the same type never give the same
//!   text, and a string never looks like an integer, float, bool or `None`:
//!   `5` renders as `5`, `"5"` as `'5`, so `1` and `"1"` never collide (a
//!   deliberate choice, see `PITFALLS.md`).
//! * **Glob-safe**: the output never contains `*`, `?`, `[`, `]` or `\`, so a
//!   value can never widen a `delete_pattern`.
//! * **Separator-safe**: `:`, `=`, `,`, `(`, `)` and `%` inside a string are
//!   percent-escaped, so a value can never fake another segment or parameter.
//! * **Clean**: no whitespace or control bytes (memcached-compatible).
//!
//! Strings keep `A-Z a-z 0-9 _ - . / @ +` as they are; every other byte is
//! written as `%XX`. Plain alphanumeric values stay readable:
//!
//! ```
//! use tg_cache_runtime::key::{CacheKeyGenerator, KeyPart};
//! assert_eq!(CacheKeyGenerator::make_model_key("Character", &[("id", &5), ("chronicle", &3)]),
//!            "tg:queryset:Character:chronicle=3:id=5");
//! assert_eq!(CacheKeyGenerator::make_view_key("home", &[("page", &2)]), "tg:view:home:page=2");
//! assert_eq!("a:b=c*".to_key_part(), "a%3Ab%3Dc%2A");
//! assert_eq!("1".to_key_part(), "'1");
//! assert_eq!(1.to_key_part(), "1");
//! ```
//!
//! # Long keys
//!
//! Keys longer than [`MAX_KEY_LEN`] bytes keep a readable head of
//! [`LONG_KEY_HEAD`] bytes followed by `:#` and 32 hex digits of the SHA-256
//! of the whole key, so they stay under the limit, stay deterministic across
//! processes and versions, and still match the prefix pattern of their family.

use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt::Write as _;

/// The longest key tg-cache emits, in bytes (memcached's and Django's limit).
pub const MAX_KEY_LEN: usize = 250;
/// How many bytes of a long key are kept readable before the hash tail.
pub const LONG_KEY_HEAD: usize = 200;

/// A value that can be written into a cache key.
///
/// Implemented for integers, floats, `bool`, `char`, strings, `Option`,
/// references, smart pointers, slices, `Vec`s, arrays and tuples. Implement it
/// for your own types by delegating to the existing impls, so escaping is
/// preserved: one identifying field (`self.id.write_key_part(out)`), or
/// several as one tuple (`(&self.a, &self.b).write_key_part(out)`), which
/// separates them unambiguously. Never write two parts one after another,
/// and never write `:` or `=` yourself: either could make two values share
/// a key.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of a cache key",
    label = "this type does not implement `tg_cache::KeyPart`",
    note = "leave the parameter out of the key with `skip(name)`, or implement `tg_cache::KeyPart` for `{Self}`"
)]
pub trait KeyPart {
    /// Appends this value, escaped, to `out`.
    fn write_key_part(&self, out: &mut String);

    /// This value's escaped key text.
    fn to_key_part(&self) -> String {
        let mut s = String::new();
        self.write_key_part(&mut s);
        s
    }
}

#[inline]
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b'@' | b'+')
}

/// Percent-escapes `s` into `out` (every byte outside `A-Za-z0-9_-./@+`).
pub fn escape_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !is_plain(b) {
            // `start..i` holds only plain ASCII bytes, so it is a char boundary
            // whenever it is non-empty.
            if start < i {
                out.push_str(&s[start..i]);
            }
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
            start = i + 1;
        }
    }
    out.push_str(&s[start..]);
}

/// Percent-escapes `s` (see [`escape_into`]). Borrowed when nothing needed escaping.
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.bytes().all(is_plain) {
        Cow::Borrowed(s)
    } else {
        let mut out = String::with_capacity(s.len() + 8);
        escape_into(s, &mut out);
        Cow::Owned(out)
    }
}

impl KeyPart for str {
    fn write_key_part(&self, out: &mut String) {
        // A string that could be read as another type's rendering gets a `'`
        // marker (which `escape_into` never emits, so it is unambiguous).
        let first = self.as_bytes().first().copied();
        let ambiguous = match first {
            None => true,
            Some(b) => {
                b.is_ascii_digit()
                    || b == b'-'
                    || b == b'+'
                    || b == b'.'
                    || matches!(self, "true" | "false" | "inf" | "NaN")
            }
        };
        if ambiguous {
            out.push('\'');
        }
        escape_into(self, out);
    }
}

impl KeyPart for String {
    fn write_key_part(&self, out: &mut String) {
        self.as_str().write_key_part(out)
    }
}

impl KeyPart for Cow<'_, str> {
    fn write_key_part(&self, out: &mut String) {
        self.as_ref().write_key_part(out)
    }
}

impl KeyPart for char {
    fn write_key_part(&self, out: &mut String) {
        self.encode_utf8(&mut [0; 4]).write_key_part(out)
    }
}

macro_rules! int_key_part {
    ($($t:ty)*) => {$(
        impl KeyPart for $t {
            #[inline]
            fn write_key_part(&self, out: &mut String) {
                out.push_str(itoa::Buffer::new().format(*self));
            }
        }
    )*};
}
int_key_part!(i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize);

macro_rules! float_key_part {
    ($($t:ty)*) => {$(
        impl KeyPart for $t {
            fn write_key_part(&self, out: &mut String) {
                // Debug always shows a `.`/`e` (`1.0`, `1e300`) or is `inf`/`-inf`/`NaN`,
                // so a float never renders like an integer.
                let _ = write!(out, "{:?}", self);
            }
        }
    )*};
}
float_key_part!(f32 f64);

impl KeyPart for bool {
    fn write_key_part(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" });
    }
}

impl KeyPart for () {
    fn write_key_part(&self, out: &mut String) {
        out.push_str("()");
    }
}

/// `None` is `~`; `Some(v)` is `v`'s text, unless that text starts with `~`
/// or `!` (only a `None` or an escaped `Some` do: strings escape both), in
/// which case it gets a leading `!`. So `Some(5)` is `5`, `Some(None)` is
/// `!~` and `Some(Some(None))` is `!!~`: nested options stay injective.
impl<T: KeyPart> KeyPart for Option<T> {
    fn write_key_part(&self, out: &mut String) {
        match self {
            // `~` is always escaped inside strings, so `None` is unambiguous.
            None => out.push('~'),
            Some(v) => {
                let start = out.len();
                v.write_key_part(out);
                if matches!(out.as_bytes().get(start), Some(b'~' | b'!')) {
                    out.insert(start, '!');
                }
            }
        }
    }
}

impl<T: KeyPart + ?Sized> KeyPart for &T {
    fn write_key_part(&self, out: &mut String) {
        (**self).write_key_part(out)
    }
}

impl<T: KeyPart + ?Sized> KeyPart for &mut T {
    fn write_key_part(&self, out: &mut String) {
        (**self).write_key_part(out)
    }
}

impl<T: KeyPart + ?Sized> KeyPart for Box<T> {
    fn write_key_part(&self, out: &mut String) {
        (**self).write_key_part(out)
    }
}

impl<T: KeyPart + ?Sized> KeyPart for std::sync::Arc<T> {
    fn write_key_part(&self, out: &mut String) {
        (**self).write_key_part(out)
    }
}

impl<T: KeyPart + ?Sized> KeyPart for std::rc::Rc<T> {
    fn write_key_part(&self, out: &mut String) {
        (**self).write_key_part(out)
    }
}

fn write_seq<'a, T: KeyPart + 'a>(items: impl IntoIterator<Item = &'a T>, out: &mut String) {
    out.push('(');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        item.write_key_part(out);
    }
    out.push(')');
}

impl<T: KeyPart> KeyPart for [T] {
    fn write_key_part(&self, out: &mut String) {
        write_seq(self, out)
    }
}

impl<T: KeyPart, const N: usize> KeyPart for [T; N] {
    fn write_key_part(&self, out: &mut String) {
        write_seq(self, out)
    }
}

impl<T: KeyPart> KeyPart for Vec<T> {
    fn write_key_part(&self, out: &mut String) {
        write_seq(self, out)
    }
}

macro_rules! tuple_key_part {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: KeyPart),+> KeyPart for ($($name,)+) {
            fn write_key_part(&self, out: &mut String) {
                out.push('(');
                $(
                    if $idx > 0 { out.push(','); }
                    self.$idx.write_key_part(out);
                )+
                out.push(')');
            }
        }
    };
}
tuple_key_part!(A 0);
tuple_key_part!(A 0, B 1);
tuple_key_part!(A 0, B 1, C 2);
tuple_key_part!(A 0, B 1, C 2, D 3);
tuple_key_part!(A 0, B 1, C 2, D 3, E 4);
tuple_key_part!(A 0, B 1, C 2, D 3, E 4, F 5);

/// Builds a key from a literal prefix and escaped parts.
///
/// ```
/// use tg_cache_runtime::key::KeyBuilder;
/// let key = KeyBuilder::new("tg:fn:char_scenes").param("character_id", &5).finish();
/// assert_eq!(key, "tg:fn:char_scenes:character_id=5");
/// ```
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    buf: String,
}

impl KeyBuilder {
    /// Starts a key with `prefix`, which is written as given: it is the
    /// programmer's namespace (`tg:fn:char_scenes`), not user data.
    pub fn new(prefix: &str) -> Self {
        let mut buf = String::with_capacity(prefix.len() + 32);
        buf.push_str(prefix);
        Self { buf }
    }

    /// Appends `:name=value`, the name and the value both escaped.
    pub fn param(mut self, name: &str, value: &(impl KeyPart + ?Sized)) -> Self {
        self.push_param(name, value);
        self
    }

    /// Appends `:value`, escaped.
    pub fn part(mut self, value: &(impl KeyPart + ?Sized)) -> Self {
        self.buf.push(':');
        value.write_key_part(&mut self.buf);
        self
    }

    /// In-place form of [`KeyBuilder::param`].
    pub fn push_param(&mut self, name: &str, value: &(impl KeyPart + ?Sized)) {
        self.buf.push(':');
        escape_into(name, &mut self.buf);
        self.buf.push('=');
        value.write_key_part(&mut self.buf);
    }

    /// Appends raw text. Only for trusted literal text such as template
    /// separators; never pass user data here.
    pub fn push_literal(&mut self, text: &str) {
        self.buf.push_str(text);
    }

    /// In-place form of [`KeyBuilder::part`] without the leading `:`.
    pub fn push_value(&mut self, value: &(impl KeyPart + ?Sized)) {
        value.write_key_part(&mut self.buf);
    }

    /// Finishes the key, shortening it if it is longer than [`MAX_KEY_LEN`].
    pub fn finish(self) -> String {
        shorten(self.buf)
    }
}

/// Shortens a key longer than [`MAX_KEY_LEN`] to a readable head plus a
/// deterministic hash tail; shorter keys are returned unchanged.
pub fn shorten(key: String) -> String {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut cut = LONG_KEY_HEAD;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    // Do not end the head in the middle of a `%XX` escape.
    let head = &key.as_bytes()[..cut];
    if let Some(pos) = head.iter().rposition(|&b| b == b'%')
        && cut - pos < 3
    {
        cut = pos;
    }
    let mut out = String::with_capacity(cut + 34);
    out.push_str(&key[..cut]);
    out.push_str(":#");
    for b in &digest[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The seed's key generator: `tg:queryset:<Model>:<filters>` and `tg:view:<view>:<params>`.
///
/// Filters and parameters are sorted by name, as in the seed, and every name
/// and value is escaped (see the [module docs](self)).
pub struct CacheKeyGenerator;

impl CacheKeyGenerator {
    /// The namespace of every key tg-cache generates.
    pub const PREFIX: &'static str = "tg";

    /// `tg:queryset:<model>:<name>=<value>:...`, filters sorted by name.
    ///
    /// With no filters the key ends in `:` like the seed's
    /// (`tg:queryset:Character:`), so `tg:queryset:Character:*` matches it.
    pub fn make_model_key(model: &str, filters: &[(&str, &dyn KeyPart)]) -> String {
        Self::make_key("queryset", model, filters)
    }

    /// `tg:view:<view>:<name>=<value>:...`, parameters sorted by name.
    pub fn make_view_key(view: &str, params: &[(&str, &dyn KeyPart)]) -> String {
        Self::make_key("view", view, params)
    }

    /// The prefix shared by every model key of `model`: `tg:queryset:<model>`.
    pub fn model_prefix(model: &str) -> String {
        format!("{}:queryset:{}", Self::PREFIX, escape(model))
    }

    /// The prefix shared by every view key of `view`: `tg:view:<view>`.
    pub fn view_prefix(view: &str) -> String {
        format!("{}:view:{}", Self::PREFIX, escape(view))
    }

    fn make_key(family: &str, name: &str, pairs: &[(&str, &dyn KeyPart)]) -> String {
        let mut sorted: Vec<&(&str, &dyn KeyPart)> = pairs.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut buf = String::with_capacity(32 + pairs.len() * 16);
        buf.push_str(Self::PREFIX);
        buf.push(':');
        buf.push_str(family);
        buf.push(':');
        escape_into(name, &mut buf);
        buf.push(':');
        for (i, (k, v)) in sorted.into_iter().enumerate() {
            if i > 0 {
                buf.push(':');
            }
            escape_into(k, &mut buf);
            buf.push('=');
            v.write_key_part(&mut buf);
        }
        shorten(buf)
    }
}

/// A glob pattern built from a literal prefix and escaped parts, safe to hand
/// to `delete_pattern`: user data inside it can never act as a wildcard.
///
/// ```
/// use tg_cache_runtime::key::KeyPattern;
/// let p = KeyPattern::prefix("tg:queryset:Character").param("chronicle", &"3*").any();
/// assert_eq!(p.as_str(), "tg:queryset:Character:chronicle='3%2A:*");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern(String);

impl KeyPattern {
    /// Starts a pattern that matches keys beginning with `prefix`; glob
    /// metacharacters in `prefix` are escaped, so they match literally.
    pub fn prefix(prefix: &str) -> Self {
        let mut s = String::with_capacity(prefix.len() + 8);
        glob_escape_into(prefix, &mut s);
        Self(s)
    }

    /// Appends `:name=value`, escaped.
    pub fn param(mut self, name: &str, value: &(impl KeyPart + ?Sized)) -> Self {
        self.0.push(':');
        escape_into(name, &mut self.0);
        self.0.push('=');
        value.write_key_part(&mut self.0);
        self
    }

    /// Appends `:value`, escaped.
    pub fn part(mut self, value: &(impl KeyPart + ?Sized)) -> Self {
        self.0.push(':');
        value.write_key_part(&mut self.0);
        self
    }

    /// Ends the pattern with `:*`: every key below this prefix.
    pub fn any(mut self) -> Self {
        self.0.push_str(":*");
        self
    }

    /// The glob text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps an already-written glob pattern. The caller is responsible for it.
    pub fn raw(pattern: impl Into<String>) -> Self {
        Self(pattern.into())
    }
}

impl std::fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for KeyPattern {
    /// A glob pattern written by the programmer, taken as it is.
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for KeyPattern {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Escapes Redis glob metacharacters (`* ? [ ] \`) so `s` matches literally.
pub fn glob_escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Whether `key` matches the Redis-style glob `pattern` (`*`, `?`, `[abc]`,
/// `[^a]`, `[a-z]`, `\x`). Used by the local store's `delete_pattern`.
pub fn glob_match(pattern: &str, key: &str) -> bool {
    glob_match_bytes(pattern.as_bytes(), key.as_bytes())
}

fn glob_match_bytes(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    if let Some((true, next)) = match_class(&p[pi..], s[si]) {
                        pi += next;
                        si += 1;
                        continue;
                    }
                }
                b'\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == s[si] {
                        pi += 2;
                        si += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[si] {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matches one byte against a `[...]` class at the start of `p`; returns
/// whether it matched and the class's length, or `None` if unterminated.
fn match_class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = p.get(1) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() && (p[i] != b']' || first) {
        first = false;
        let mut lo = p[i];
        if lo == b'\\' && i + 1 < p.len() {
            i += 1;
            lo = p[i];
        }
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            let hi = p[i + 2];
            let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
            if (a..=b).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
    if i >= p.len() {
        return None;
    }
    Some((matched != negate, i + 1))
}

/// The family of a tg-cache key: its first three segments
/// (`tg:queryset:Character`, `tg:fn:char_scenes`, `tg:view:home`). Entries
/// of one family can be invalidated together in O(1) (a generation bump);
/// keys outside the `tg:` namespace belong to no family.
///
/// ```
/// use tg_cache_runtime::key::family_of;
/// assert_eq!(family_of("tg:queryset:Character:id=5"), Some("tg:queryset:Character"));
/// assert_eq!(family_of("tg:view:home"), Some("tg:view:home"));
/// assert_eq!(family_of("my_key"), None);
/// ```
pub fn family_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("tg:")?;
    let first = rest.find(':')?;
    match rest[first + 1..].find(':') {
        Some(second) => Some(&key[..3 + first + 1 + second]),
        None => Some(key),
    }
}

/// Whether `key` ends with the hash tail that [`shorten`] gives long keys.
fn shortened_head(key: &str) -> Option<&str> {
    let (head, tail) = key.rsplit_once(":#")?;
    (tail.len() == 32 && tail.bytes().all(|b| b.is_ascii_hexdigit())).then_some(head)
}

/// Whether `pattern` covers the stored key `key`: it matches it, or `key`
/// is a shortened long key whose readable head some match of `pattern`
/// could start with (the rest of the original key is gone, so a pattern
/// that might have matched it must delete it: over-deleting a cache entry
/// is safe, leaving it stale is not).
///
/// ```
/// use tg_cache_runtime::key::{pattern_covers, shorten};
/// let long = shorten(format!("tg:queryset:Character:bio={}:id=5", "a".repeat(300)));
/// assert!(pattern_covers("tg:queryset:Character:*:id=5", &long));
/// assert!(!pattern_covers("tg:queryset:Scene:*", &long));
/// ```
pub fn pattern_covers(pattern: &str, key: &str) -> bool {
    if glob_match(pattern, key) {
        return true;
    }
    match shortened_head(key) {
        Some(head) => glob_prefix_match(pattern.as_bytes(), head.as_bytes()),
        None => false,
    }
}

/// Whether some string starting with `s` matches the glob `p`.
fn glob_prefix_match(p: &[u8], s: &[u8]) -> bool {
    // Walks like `glob_match_bytes`; a `*` matches any rest, so no
    // backtracking is needed, and running out of text is a match: the
    // missing rest of the key can be anything.
    let (mut pi, mut si) = (0, 0);
    while si < s.len() {
        let Some(&c) = p.get(pi) else { return false };
        match c {
            b'*' => return true,
            b'?' => pi += 1,
            b'[' => match match_class(&p[pi..], s[si]) {
                Some((true, next)) => pi += next,
                _ => return false,
            },
            b'\\' if pi + 1 < p.len() => {
                if p[pi + 1] != s[si] {
                    return false;
                }
                pi += 2;
            }
            c if c == s[si] => pi += 1,
            _ => return false,
        }
        si += 1;
    }
    true
}

/// The `SCAN MATCH` pattern that finds every key `pattern` covers and their
/// leases: the pattern's literal head followed by `*`. The caller filters
/// the scanned keys with [`pattern_covers`].
pub(crate) fn scan_pattern(pattern: &str) -> String {
    let bytes = pattern.as_bytes();
    let mut end = 0;
    while end < bytes.len() && !matches!(bytes[end], b'*' | b'?' | b'[' | b']' | b'\\') {
        end += 1;
    }
    format!("{}*", &pattern[..end])
}

/// Checks a key given to the manual API: it must be non-empty, free of
/// whitespace and control characters, and outside the reserved namespace
/// (a segment starting with `#`: leases `<key>:#lease`, epochs
/// `#epoch:<family>`; a shortened key's own `:#<hash>` tail is allowed).
/// Keys over [`MAX_KEY_LEN`] are shortened.
pub(crate) fn check_key(key: &str) -> Result<Cow<'_, str>, crate::Error> {
    if key.is_empty() {
        return Err(crate::Error::InvalidKey {
            key: key.to_owned(),
            reason: "keys must not be empty",
        });
    }
    if key
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        || key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(crate::Error::InvalidKey {
            key: key.to_owned(),
            reason: "keys must not contain whitespace or control characters; build keys with KeyBuilder or CacheKeyGenerator, which escape values",
        });
    }
    let unreserved = shortened_head(key).unwrap_or(key);
    if unreserved.starts_with('#') || unreserved.contains(":#") {
        return Err(crate::Error::InvalidKey {
            key: key.to_owned(),
            reason: "a key segment starting with `#` is reserved for tg-cache's own keys (fill leases, family epochs); escape user data with KeyBuilder or CacheKeyGenerator, which never emit it",
        });
    }
    if key.len() > MAX_KEY_LEN {
        return Ok(Cow::Owned(shorten(key.to_owned())));
    }
    Ok(Cow::Borrowed(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_keys() {
        assert_eq!(
            CacheKeyGenerator::make_model_key("Character", &[("id", &5)]),
            "tg:queryset:Character:id=5"
        );
        assert_eq!(
            CacheKeyGenerator::make_model_key("Character", &[]),
            "tg:queryset:Character:"
        );
    }

    #[test]
    fn strings_never_look_like_other_types() {
        assert_eq!("".to_key_part(), "'");
        assert_eq!("true".to_key_part(), "'true");
        assert_eq!(true.to_key_part(), "true");
        assert_eq!(None::<i32>.to_key_part(), "~");
        assert_eq!("~".to_key_part(), "%7E");
        assert_eq!("!".to_key_part(), "%21");
        assert_eq!(Some(5).to_key_part(), "5");
        assert_eq!(Some(None::<i32>).to_key_part(), "!~");
        assert_eq!(Some(Some(None::<i32>)).to_key_part(), "!!~");
        assert_eq!(Some(Some(5)).to_key_part(), "5");
        assert_ne!(
            None::<Option<i32>>.to_key_part(),
            Some(None::<i32>).to_key_part()
        );
        assert_eq!(1.5f64.to_key_part(), "1.5");
        assert_eq!("1.5".to_key_part(), "'1.5");
        assert_eq!(1.0f64.to_key_part(), "1.0");
        assert_eq!(vec!["a,b", "c"].to_key_part(), "(a%2Cb,c)");
        assert_eq!(vec!["a", "b,c"].to_key_part(), "(a,b%2Cc)");
    }

    #[test]
    fn escaping_removes_glob_and_space() {
        let s = "a b*?[x]\\%:=\t\n\u{7f}é".to_key_part();
        for bad in ['*', '?', '[', ']', '\\', ' ', ':', '=', '\t', '\n'] {
            assert!(!s.contains(bad), "{s:?} contains {bad:?}");
        }
        assert_eq!(s, "a%20b%2A%3F%5Bx%5D%5C%25%3A%3D%09%0A%7F%C3%A9");
    }

    #[test]
    fn long_keys_are_shortened_deterministically() {
        let long = format!("tg:fn:x:q={}", "a".repeat(400));
        let a = shorten(long.clone());
        let b = shorten(long.clone());
        assert_eq!(a, b);
        assert!(a.len() <= MAX_KEY_LEN, "{}", a.len());
        assert!(a.starts_with("tg:fn:x:q=aaa"));
        let other = shorten(format!("{long}b"));
        assert_ne!(a, other);
        // no half escape at the cut
        let esc = format!("tg:{}", "%2A".repeat(100));
        let s = shorten(esc);
        let head = s.split(":#").next().unwrap();
        assert!(!head.ends_with('%') && !head.ends_with("%2"), "{head}");
    }

    #[test]
    fn families() {
        assert_eq!(family_of("tg:fn:square:x=3"), Some("tg:fn:square"));
        assert_eq!(
            family_of("tg:queryset:Character:"),
            Some("tg:queryset:Character")
        );
        assert_eq!(family_of("tg:x"), None);
        assert_eq!(
            family_of("tg:gen:queryset:Character"),
            Some("tg:gen:queryset")
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("tg:*", "tg:a:b"));
        assert!(!glob_match("tg:*", "tx:a"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("a[bx]c", "axc"));
        assert!(!glob_match("a[^bx]c", "axc"));
        assert!(glob_match("a[a-c]", "ab"));
        assert!(glob_match("a\\*", "a*"));
        assert!(!glob_match("a\\*", "ab"));
        assert!(glob_match("*", ""));
        assert!(glob_match(
            "tg:queryset:Character:*",
            "tg:queryset:Character:id=5"
        ));
    }

    #[test]
    fn pattern_prefix_is_glob_escaped() {
        assert_eq!(KeyPattern::prefix("a*b").any().as_str(), "a\\*b:*");
    }

    #[test]
    fn check_key_rules() {
        assert!(check_key("a b").is_err());
        assert!(check_key("").is_err());
        assert!(check_key("a\u{0}").is_err());
        assert_eq!(check_key("tg:x").unwrap(), "tg:x");
        assert!(check_key(&"k".repeat(300)).unwrap().len() <= MAX_KEY_LEN);
        for reserved in ["#epoch:tg:fn:x", "a:#lease", "tg:fn:x:1:#lease", "#"] {
            assert!(check_key(reserved).is_err(), "{reserved}");
        }
        let long = shorten(format!("tg:x:{}", "a".repeat(300)));
        assert_eq!(check_key(&long).unwrap(), long);
        assert!(check_key(&format!("{long}:#lease")).is_err());
    }

    #[test]
    fn patterns_cover_shortened_keys_and_scan_wide_enough() {
        let long = shorten(format!("tg:queryset:Character:a={}:id=5", "x".repeat(300)));
        assert!(pattern_covers("tg:queryset:Character:*", &long));
        assert!(pattern_covers("tg:queryset:Character:*:id=5", &long));
        assert!(pattern_covers("tg:queryset:Character:a=x*", &long));
        assert!(!pattern_covers("tg:queryset:Character:b=*", &long));
        assert!(!pattern_covers("tg:queryset:Scene:*", &long));
        assert!(pattern_covers("tg:x:1", "tg:x:1"));
        assert!(!pattern_covers("tg:x:1", "tg:x:10"));
        assert_eq!(scan_pattern("tg:x:1"), "tg:x:1*");
        assert_eq!(scan_pattern("tg:x:*:id=1"), "tg:x:*");
        assert_eq!(scan_pattern("a\\*b"), "a*");
        assert!(glob_match(&scan_pattern("tg:x:1"), "tg:x:1:#lease"));
    }
}
