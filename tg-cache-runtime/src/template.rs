//! Template fragment caching for MiniJinja (the seed's `{% cache %}` tag).
//! Enabled by the `minijinja` feature.
//!
//! ```
//! # use tg_cache_runtime as tg_cache;
//! let mut env = minijinja::Environment::new();
//! tg_cache::template::add_to_environment(&mut env, tg_cache::cache());
//! env.add_template("detail", r#"
//! {%- call cache("character_details", 900, character.id) -%}
//!   <div class="character-details">{{ character.name }}</div>
//! {%- endcall %}"#).unwrap();
//! let html = env.get_template("detail").unwrap()
//!     .render(minijinja::context! { character => minijinja::context! { id => 5, name => "Ada" } })
//!     .unwrap();
//! assert!(html.contains("Ada"));
//! assert_eq!(tg_cache::template::make_template_fragment_key("character_details", &[&5]),
//!            "tg:fragment:character_details:5");
//! ```
//!
//! On a hit the enclosed block is not rendered at all. The arguments are the
//! fragment name, the timeout in seconds (`0`: do not cache; `none`: never
//! expire) and any number of vary-on values, escaped like every other key
//! part, so `1`, `"1"` and `"a:b"` never collide. An *undefined* vary-on
//! value (a misspelt `character.idd`) is a template error naming the
//! fragment and the argument's position, never a key shared by every
//! caller; pass `none` explicitly to vary on "no value". Rendering is synchronous,
//! so it uses the cache's blocking face: on a Redis cache, render in
//! `spawn_blocking` rather than on an async worker.

use crate::cache::Cache;
use crate::key::{KeyBuilder, KeyPart};
use crate::timeout::Timeout;
use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use std::time::Duration;

/// The key of a template fragment: `tg:fragment:<name>:<vary_on>...`.
/// Code and `#[invalidate(key = ..)]` use it to drop a fragment.
pub fn make_template_fragment_key(name: &str, vary_on: &[&dyn KeyPart]) -> String {
    let mut b = KeyBuilder::new(&format!("tg:fragment:{}", crate::key::escape(name)));
    for v in vary_on {
        b = b.part(*v);
    }
    b.finish()
}

/// A template value as a key part: numbers, strings, booleans, none and
/// sequences keep their types apart.
struct ValuePart<'a>(&'a Value);

impl KeyPart for ValuePart<'_> {
    fn write_key_part(&self, out: &mut String) {
        let v = self.0;
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => None::<i64>.write_key_part(out),
            ValueKind::Bool => v.is_true().write_key_part(out),
            // Integers exactly, whatever their width; other numbers as floats
            // (which always render with a `.`, `e`, `inf` or `NaN`).
            ValueKind::Number => {
                if let Ok(i) = i128::try_from(v.clone()) {
                    i.write_key_part(out)
                } else if let Ok(u) = u128::try_from(v.clone()) {
                    u.write_key_part(out)
                } else {
                    f64::try_from(v.clone())
                        .unwrap_or(f64::NAN)
                        .write_key_part(out)
                }
            }
            ValueKind::String => v.as_str().unwrap_or_default().write_key_part(out),
            ValueKind::Seq => {
                let items: Vec<Value> = v.try_iter().map(|i| i.collect()).unwrap_or_default();
                let parts: Vec<ValuePart<'_>> = items.iter().map(ValuePart).collect();
                parts.write_key_part(out)
            }
            // Maps, objects and bytes: their rendered text, escaped, after a
            // raw `!` that no string, number or sequence part starts with
            // (strings escape `!`), so it cannot pass for any of them.
            _ => {
                out.push('!');
                crate::key::escape_into(&v.to_string(), out);
            }
        }
    }
}

/// Whether `v` is undefined or a sequence holding an undefined item.
fn has_undefined(v: &Value) -> bool {
    match v.kind() {
        ValueKind::Undefined => true,
        ValueKind::Seq => v
            .try_iter()
            .is_ok_and(|mut items| items.any(|i| has_undefined(&i))),
        _ => false,
    }
}

/// Registers the `cache` function (used with `{% call cache(..) %}`) in `env`,
/// storing fragments in `cache`.
pub fn add_to_environment(env: &mut Environment<'_>, cache: &'static Cache) {
    env.add_function(
        "cache",
        move |state: &State, name: String, timeout: Value, vary_on: Rest<Value>, kwargs: Kwargs| {
            fragment(cache, state, &name, &timeout, &vary_on, kwargs)
        },
    );
}

fn fragment(
    cache: &Cache,
    state: &State,
    name: &str,
    timeout: &Value,
    vary_on: &[Value],
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let caller: Value = kwargs.get("caller").map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            "cache() wraps a block: write {% call cache(\"name\", 900, vary_on..) %}...{% endcall %}",
        )
    })?;
    kwargs.assert_all_used()?;
    let timeout = match timeout.kind() {
        ValueKind::None | ValueKind::Undefined => Timeout::Never,
        _ => match u64::try_from(timeout.clone()) {
            Ok(secs) => Timeout::from(Duration::from_secs(secs)),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("cache(): the timeout must be whole seconds or none, not {timeout}"),
                ));
            }
        },
    };
    if let Some(pos) = vary_on.iter().position(has_undefined) {
        return Err(Error::new(
            ErrorKind::UndefinedError,
            format!(
                "cache({name:?}): vary-on argument {} is undefined (a misspelt variable or attribute?); \
                 an undefined value would make every caller share one fragment",
                pos + 1
            ),
        ));
    }
    let parts: Vec<ValuePart<'_>> = vary_on.iter().map(ValuePart).collect();
    let dyn_parts: Vec<&dyn KeyPart> = parts.iter().map(|p| p as &dyn KeyPart).collect();
    let key = make_template_fragment_key(name, &dyn_parts);
    let mut render_error = None;
    let html = cache
        .blocking()
        .get_or_set_with::<crate::cache::OkOnly, _>(&key, timeout, || {
            caller.call(state, &[]).map(|v| v.to_string()).map_err(|e| {
                render_error = Some(e.to_string());
            })
        });
    match html {
        Ok(html) => Ok(Value::from_safe_string(html)),
        Err(()) => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "rendering the cached fragment {name:?} failed: {}",
                render_error.unwrap_or_default()
            ),
        )),
    }
}
