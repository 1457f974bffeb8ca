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
//! Keys are stored exactly as built, whatever their length (Redis has no
//! key length limit; Django's Redis backends do not shorten keys either),
//! so a pattern built from the same parts always matches them. A key over
//! [`MAX_KEY_BYTES`] is refused ([`crate::Error::InvalidKey`]); cached
//! functions then run uncached.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The longest key tg-cache accepts, in bytes: 64 KiB. A longer key (a
/// cached function called with a huge argument) is refused rather than
/// sent to Redis on every call.
pub const MAX_KEY_BYTES: usize = 64 * 1024;

/// How a cache turns the keys it is given into the keys it stores.
///
/// | | [`KeyFunction::Tg`] (default) | [`KeyFunction::Django`] |
/// |---|---|---|
/// | neither `key_prefix` nor `version` | `k` | `:1:k` |
/// | `version(2)` | `:2:k` | `:2:k` |
/// | `key_prefix("app")` | `app:1:k` | `app:1:k` |
/// | whitespace or control characters | refused ([`crate::Error::InvalidKey`]) | kept; a warning, as Django's |
/// | over 250 bytes | kept | kept; a warning, as Django's |
/// | values of a key family | stamped with the family's epoch (`#<epoch>:<json>`) | exactly as Django's `JSONSerializer` writes them |
/// | `invalidate_family` | O(1): a new epoch | the new epoch, then a `SCAN` of the family's keys, unlinked |
///
/// `Django` is what a cache shared with a Django application needs:
/// Django's `make_key` (`<KEY_PREFIX>:<VERSION>:<key>`, version 1 by
/// default), never shortened, and values that Django reads as they are.
/// It is not the default, because a cache that only Rust reads gains
/// nothing from it and loses two things: O(1) family invalidation (a
/// value carries no epoch, so invalidating a family must find its keys,
/// in O(keys in the database)), and the refusal of keys that
/// memcached-style tools cannot handle. See the configuration guide's
/// "Sharing a Redis with Django".
///
/// On both, a key segment starting with `#` stays reserved for tg-cache's
/// own keys, and keys over [`MAX_KEY_BYTES`] are refused. `Django` is for
/// Redis: on a local store it only adds the `:1:` namespace (and a
/// namespaced local store has no lock-free `#[cache_function]` hit path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFunction {
    /// tg-cache's own: keys as given (namespaced only when a prefix or a
    /// version is set), clean of whitespace, family values stamped.
    #[default]
    Tg,
    /// Django's default `make_key`, and values as Django reads them.
    Django,
}

impl KeyFunction {
    /// Parses `tg` or `django` (as `TG_CACHE_KEY_FUNCTION` takes them).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "tg" | "tg-cache" => Some(KeyFunction::Tg),
            "django" => Some(KeyFunction::Django),
            _ => None,
        }
    }
}

/// The longest key Django accepts without a warning (memcached's limit).
pub const DJANGO_MAX_KEY_LENGTH: usize = 250;

/// Why Django's `validate_key` would warn about `key`
/// (`memcache_key_warnings`), if it would: a key over
/// [`DJANGO_MAX_KEY_LENGTH`] characters, or with a character below
/// `0x21` or `0x7f`.
pub fn django_key_warning(key: &str) -> Option<&'static str> {
    if key.chars().count() > DJANGO_MAX_KEY_LENGTH {
        return Some(
            "longer than 250 characters; Django warns that it will cause errors if used with memcached",
        );
    }
    if key.chars().any(|c| (c as u32) < 33 || c as u32 == 127) {
        return Some(
            "contains characters that will cause errors if used with memcached (whitespace or control); Django warns about it",
        );
    }
    None
}

/// A value that can be written into a cache key.
///
/// Implemented for integers, floats, `bool`, `char`, strings, `Option`,
/// references, smart pointers, slices, `Vec`s, arrays and tuples. Derive it
/// for your own structs and enums with `#[derive(tg_cache::KeyPart)]`, or
/// implement it by delegating to the existing impls, so escaping is
/// preserved: one identifying field (`self.id.write_key_part(out)`), or
/// several as one tuple (`(&self.a, &self.b).write_key_part(out)`), which
/// separates them unambiguously. Never write two parts one after another,
/// and never write `:` or `=` yourself: either could make two values share
/// a key.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of a cache key",
    label = "this type does not implement `tg_cache::KeyPart`",
    note = "add `#[derive(tg_cache::KeyPart)]` to `{Self}` (its fields must be key parts too), leave the parameter out of the key with `skip(name)`, or implement `tg_cache::KeyPart` for it; `Serialize` is not enough"
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

    /// Finishes the key.
    pub fn finish(self) -> String {
        self.buf
    }
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
        buf
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

/// The text of a URL path in page keys (`tg:view:<view>:path=<this>:..`):
/// the path percent-decoded once, then escaped byte by byte as every key
/// text is ([`escape_into`], no type marker), `/` kept, and an encoded
/// slash (`%2F`) kept apart from a real one. So `/posts/Ada%20Lovelace` and
/// `/posts/Ada Lovelace` give the same text, `/a%2Fb` and `/a/b` do not,
/// and a leading digit (`/posts/2024-recap`) is plain text. A `%` not
/// followed by two hex digits stands for itself. The result never holds a
/// glob character, a `:`, an `=` or whitespace.
///
/// ```
/// use tg_cache_runtime::key::page_path;
/// assert_eq!(page_path("/posts/Ada%20Lovelace"), "/posts/Ada%20Lovelace");
/// assert_eq!(page_path("/posts/Ada Lovelace"), "/posts/Ada%20Lovelace");
/// assert_eq!(page_path("/posts/2024-recap"), "/posts/2024-recap");
/// assert_eq!(page_path("/a%2fb"), "/a%2Fb");
/// assert_eq!(page_path("/caf%C3%A9"), page_path("/café"));
/// ```
pub fn page_path(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len() + 8);
    let mut i = 0;
    while i < b.len() {
        let decoded = match (b[i], b.get(i + 1), b.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                Some(hex_value(h) << 4 | hex_value(l))
            }
            _ => None,
        };
        match decoded {
            Some(byte) => {
                push_path_byte(byte, true, &mut out);
                i += 3;
            }
            None => {
                push_path_byte(b[i], false, &mut out);
                i += 1;
            }
        }
    }
    out
}

fn hex_value(h: u8) -> u8 {
    match h {
        b'0'..=b'9' => h - b'0',
        b'a'..=b'f' => h - b'a' + 10,
        _ => h - b'A' + 10,
    }
}

fn push_path_byte(byte: u8, encoded: bool, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if byte == b'/' && !encoded || byte != b'/' && is_plain(byte) {
        out.push(byte as char);
    } else {
        out.push('%');
        out.push(HEX[(byte >> 4) as usize] as char);
        out.push(HEX[(byte & 15) as usize] as char);
    }
}

/// A URL path built from literal text and values, for invalidating the
/// pages of a model (`#[invalidate(page(view = "posts", path =
/// "/posts/{slug}"))]` generates one): each value is one path segment,
/// whatever it holds (a `/` or `%` in it is encoded, as a link to the page
/// would encode it), and [`PagePath::finish`] gives its [`page_path`] text.
///
/// ```
/// use tg_cache_runtime::key::{PagePath, page_path};
/// let p = PagePath::new().literal("/posts/").segment(&"Ada Lovelace").finish();
/// assert_eq!(p, page_path("/posts/Ada%20Lovelace"));
/// let p = PagePath::new().literal("/files/").segment(&"a/b").finish();
/// assert_eq!(p, page_path("/files/a%2Fb"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct PagePath(String);

impl PagePath {
    /// An empty path.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends URL path text as written (`/posts/`).
    pub fn literal(mut self, text: &str) -> Self {
        self.0.push_str(text);
        self
    }

    /// Appends a value as one path segment (its `Display` text).
    pub fn segment(mut self, value: &(impl std::fmt::Display + ?Sized)) -> Self {
        let text = value.to_string();
        for c in text.chars() {
            match c {
                '/' => self.0.push_str("%2F"),
                '%' => self.0.push_str("%25"),
                c => self.0.push(c),
            }
        }
        self
    }

    /// The path as page keys hold it ([`page_path`]).
    pub fn finish(self) -> String {
        page_path(&self.0)
    }
}

/// The pattern of every cached variant of one page of a view (every host,
/// scheme, query string and varied header or cookie):
/// `tg:view:<view>:path=<page_path(path)>:*`.
///
/// ```
/// use tg_cache_runtime::key::page_pattern;
/// assert_eq!(page_pattern("posts", "/posts/2024-recap").as_str(), "tg:view:posts:path=/posts/2024-recap:*");
/// ```
pub fn page_pattern(view: &str, path: &str) -> KeyPattern {
    let mut p = KeyPattern::prefix(&CacheKeyGenerator::view_prefix(view));
    p.0.push_str(":path=");
    p.0.push_str(&page_path(path));
    p.any()
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

/// Whether `key` matches the glob `pattern` exactly as Redis' `SCAN MATCH`
/// and `KEYS` decide it (`*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`, with
/// Redis' own reading of odd patterns: `[]` matches nothing, an unclosed
/// `[` runs to the end, `[a-]` is a range ending at `]`, and range bounds
/// compare as signed bytes, so `[a-é]` holds every byte from 0x80 up to
/// `a`, as Redis on x86-64 reads it): a port of `stringmatchlen` from
/// Redis' `util.c`. The local store's pattern deletes
/// use it, so both stores delete the same keys.
pub fn glob_match(pattern: &str, key: &str) -> bool {
    // `SCAN` and `KEYS` do not match a lone `*` at all: every key.
    if pattern == "*" {
        return true;
    }
    let mut skip_longer = false;
    string_match(
        pattern.as_bytes(),
        0,
        key.as_bytes(),
        0,
        &mut skip_longer,
        0,
    )
}

/// `stringmatchlen_impl` over `p[pi..]` and `s[si..]`. Redis reads past the
/// pattern's end as a NUL byte; so does [`at`].
fn string_match(
    p: &[u8],
    mut pi: usize,
    s: &[u8],
    mut si: usize,
    skip_longer: &mut bool,
    nesting: u32,
) -> bool {
    // Protection against abusive patterns, as in Redis.
    if nesting > 1000 {
        return false;
    }
    let at = |i: usize| p.get(i).copied().unwrap_or(0);
    while pi < p.len() && si < s.len() {
        match p[pi] {
            b'*' => {
                while pi < p.len() && at(pi + 1) == b'*' {
                    pi += 1;
                }
                if p.len() - pi == 1 {
                    return true;
                }
                while si < s.len() {
                    if string_match(p, pi + 1, s, si, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    si += 1;
                }
                *skip_longer = true;
                return false;
            }
            b'?' => si += 1,
            b'[' => {
                pi += 1;
                let negate = at(pi) == b'^';
                if negate {
                    pi += 1;
                }
                let mut matched = false;
                loop {
                    let left = p.len().saturating_sub(pi);
                    if at(pi) == b'\\' && left >= 2 {
                        pi += 1;
                        if at(pi) == s[si] {
                            matched = true;
                        }
                    } else if at(pi) == b']' {
                        break;
                    } else if left == 0 {
                        pi -= 1;
                        break;
                    } else if left >= 3 && at(pi + 1) == b'-' {
                        // Redis compares C `char`s, signed on the x86-64
                        // and most other builds: a byte from 0x80 up sorts
                        // below every ASCII byte in a range.
                        let signed = |b: u8| b as i8;
                        let (mut lo, mut hi) = (signed(at(pi)), signed(at(pi + 2)));
                        if lo > hi {
                            std::mem::swap(&mut lo, &mut hi);
                        }
                        pi += 2;
                        if (lo..=hi).contains(&signed(s[si])) {
                            matched = true;
                        }
                    } else if at(pi) == s[si] {
                        matched = true;
                    }
                    pi += 1;
                }
                if matched == negate {
                    return false;
                }
                si += 1;
            }
            c => {
                let c = if c == b'\\' && p.len() - pi >= 2 {
                    pi += 1;
                    p[pi]
                } else {
                    c
                };
                if c != s[si] {
                    return false;
                }
                si += 1;
            }
        }
        pi += 1;
        if si == s.len() {
            while at(pi) == b'*' {
                pi += 1;
            }
            break;
        }
    }
    pi >= p.len() && si == s.len()
}

/// The Redis Cluster hash slot (0..16384) of a stored key: `CRC16` of the
/// key, or of its hash tag (the bytes between its first `{` and the next
/// `}`, if not empty), modulo 16384, as `CLUSTER KEYSLOT` computes it.
///
/// ```
/// use tg_cache_runtime::key::cluster_slot;
/// assert_eq!(cluster_slot("somekey"), 11058);
/// assert_eq!(cluster_slot("{user1000}.following"), cluster_slot("user1000"));
/// ```
pub fn cluster_slot(key: &str) -> u16 {
    crate::store::slots::slot_of(key.as_bytes())
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

/// Checks a key given to the manual API: it must be non-empty, at most
/// [`MAX_KEY_BYTES`] long, free of whitespace and control characters, and
/// outside the reserved namespace (a segment starting with `#`: epochs
/// `#epoch:<family>`).
///
/// With [`KeyFunction::Django`], whitespace and control characters are
/// kept, as Django keeps them ([`django_key_warning`] says when Django
/// warns).
pub(crate) fn check_key(key: &str, function: KeyFunction) -> Result<Cow<'_, str>, crate::Error> {
    if key.is_empty() {
        return Err(crate::Error::InvalidKey {
            key: key.to_owned(),
            reason: "keys must not be empty",
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(crate::Error::InvalidKey {
            key: format!(
                "{}...",
                &key[..(0..=64)
                    .rev()
                    .find(|&i| key.is_char_boundary(i))
                    .unwrap_or(0)]
            ),
            reason: "keys may be at most 64 KiB (MAX_KEY_BYTES); leave big arguments out of the key (skip) and key on an identifier",
        });
    }
    if function == KeyFunction::Tg
        && (key
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            || key.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(crate::Error::InvalidKey {
            key: key.to_owned(),
            reason: "keys must not contain whitespace or control characters; build keys with KeyBuilder or CacheKeyGenerator, which escape values",
        });
    }
    if key.starts_with('#') || key.contains(":#") {
        return Err(crate::Error::InvalidKey {
            key: key.to_owned(),
            reason: "a key segment starting with `#` is reserved for tg-cache's own keys (family epochs, fill placeholders); escape user data with KeyBuilder or CacheKeyGenerator, which never emit it",
        });
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
    fn long_keys_are_kept_whole() {
        let long = format!("tg:fn:x:q={}", "a".repeat(400));
        assert_eq!(
            KeyBuilder::new("tg:fn:x")
                .param("q", &"a".repeat(400))
                .finish(),
            long
        );
        assert_eq!(check_key(&long, KeyFunction::Tg).unwrap(), long);
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1), KeyFunction::Tg).is_err());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES), KeyFunction::Tg).is_ok());
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
        let tg = KeyFunction::Tg;
        assert!(check_key("a b", tg).is_err());
        assert!(check_key("", tg).is_err());
        assert!(check_key("a\u{0}", tg).is_err());
        assert_eq!(check_key("tg:x", tg).unwrap(), "tg:x");
        assert_eq!(check_key(&"k".repeat(300), tg).unwrap().len(), 300);
        // Django's rules: kept as given, with Django's warnings.
        let dj = KeyFunction::Django;
        assert_eq!(check_key("a b", dj).unwrap(), "a b");
        assert_eq!(check_key("a\u{0}", dj).unwrap(), "a\u{0}");
        assert!(check_key("", dj).is_err());
        assert!(check_key("a:#epoch:x", dj).is_err());
        assert!(django_key_warning("a b").is_some());
        assert!(django_key_warning("a\u{7f}").is_some());
        assert!(django_key_warning(&"k".repeat(250)).is_none());
        assert!(django_key_warning(&"k".repeat(251)).is_some());
        assert!(django_key_warning("tg:queryset:Character:id=5").is_none());
    }

    #[test]
    fn odd_patterns_read_as_redis_reads_them() {
        // An empty class matches nothing; `[^]` anything.
        assert!(!glob_match("a[]b", "axb") && !glob_match("a[]b", "a]b"));
        assert!(glob_match("a[^]", "ax"));
        // An unclosed class runs to the end of the pattern.
        assert!(glob_match("a[bc", "ab") && glob_match("a[bc", "ac"));
        assert!(!glob_match("a[bc", "abc"));
        // `[a-]`: a range from `a` to `]`, and the class goes on.
        assert!(glob_match("[a-]x]", "^") && glob_match("[a-]x]", "x"));
        assert!(!glob_match("[a-]x]", "b") && !glob_match("[a-]x]", "^x"));
        // An escaped range start is a plain character.
        assert!(glob_match("[\\a-c]", "a") && glob_match("[\\a-c]", "-"));
        // A trailing backslash matches itself.
        assert!(glob_match("a\\", "a\\"));
    }
}
