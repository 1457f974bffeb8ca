//! Every generic parameter that can change a cached function's result is in
//! its key: const parameters, type parameters, the type of `Self` (which
//! holds a surrounding impl's parameters). And `#[derive(KeyPart)]`.
//! Counted by body runs on the local store.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use tg_cache::{KeyPart, cache_function};

static SIZED: AtomicUsize = AtomicUsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static SETTINGS: AtomicUsize = AtomicUsize::new(0);
static REPO_NAME: AtomicUsize = AtomicUsize::new(0);
static REPO_ALL: AtomicUsize = AtomicUsize::new(0);
static SEARCH: AtomicUsize = AtomicUsize::new(0);

fn ran(counter: &AtomicUsize) {
    counter.fetch_add(1, SeqCst);
}

#[cache_function(key_prefix = "gen_sized")]
fn sized<const N: usize>() -> usize {
    ran(&SIZED);
    N
}

trait Table {
    const NAME: &'static str;
}
struct Characters;
struct Scenes;
impl Table for Characters {
    const NAME: &'static str = "characters";
}
impl Table for Scenes {
    const NAME: &'static str = "scenes";
}

#[cache_function(key_prefix = "gen_count")]
fn count<T: Table>() -> String {
    ran(&COUNT);
    T::NAME.to_owned()
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Settings {
    level: u8,
}

impl Settings {
    #[cache_function(key_prefix = "gen_settings")]
    fn load() -> Self {
        ran(&SETTINGS);
        Settings { level: 3 }
    }
}

struct Repo<T> {
    id: i64,
    _t: PhantomData<T>,
}

impl<T: Table + Send + Sync + 'static> Repo<T> {
    fn new(id: i64) -> Self {
        Repo {
            id,
            _t: PhantomData,
        }
    }

    #[cache_function(key_prefix = "gen_repo_name", key = "{self.id}")]
    fn name(&self) -> String {
        ran(&REPO_NAME);
        format!("{}#{}", T::NAME, self.id)
    }

    #[cache_function(key_prefix = "gen_repo_all", self_type = true)]
    fn all() -> String {
        ran(&REPO_ALL);
        T::NAME.to_owned()
    }
}

/// Every call of `f` runs once per distinct instantiation, and the second
/// call of each is a hit.
fn once_each<R: PartialEq + std::fmt::Debug>(runs: &AtomicUsize, calls: &[(&dyn Fn() -> R, R)]) {
    let before = runs.load(SeqCst);
    for (f, want) in calls {
        assert_eq!(&f(), want);
    }
    for (f, want) in calls {
        assert_eq!(
            &f(),
            want,
            "a second call returned another instantiation's value"
        );
    }
    assert_eq!(
        runs.load(SeqCst) - before,
        calls.len(),
        "instantiations shared an entry or missed their own"
    );
}

#[test]
fn const_parameters_are_in_the_key() {
    once_each(&SIZED, &[(&sized::<3>, 3), (&sized::<4>, 4)]);
    assert_eq!(sized_cache_key::<3>(), "tg:fn:gen_sized:N=3");
}

#[test]
fn type_parameters_are_in_the_key() {
    once_each(
        &COUNT,
        &[
            (&count::<Characters>, "characters".to_owned()),
            (&count::<Scenes>, "scenes".to_owned()),
        ],
    );
    assert!(count_cache_key::<Scenes>().starts_with("tg:fn:gen_count:T=generics%3A%3AScenes"));
}

#[test]
fn self_is_in_the_key_of_a_method_of_a_generic_impl() {
    let (a, b) = (Repo::<Characters>::new(1), Repo::<Scenes>::new(1));
    once_each(
        &REPO_NAME,
        &[
            (&|| a.name(), "characters#1".to_owned()),
            (&|| b.name(), "scenes#1".to_owned()),
        ],
    );
    assert_ne!(a.name_cache_key(), b.name_cache_key());
}

#[test]
fn self_type_keys_an_associated_function_of_a_generic_impl() {
    once_each(
        &REPO_ALL,
        &[
            (&Repo::<Characters>::all, "characters".to_owned()),
            (&Repo::<Scenes>::all, "scenes".to_owned()),
        ],
    );
}

#[test]
fn a_function_returning_self_is_keyed_on_self() {
    once_each(&SETTINGS, &[(&Settings::load, Settings { level: 3 })]);
    assert_eq!(
        Settings::load_cache_key(),
        format!(
            "tg:fn:gen_settings:Self={}",
            tg_cache::key::escape(std::any::type_name::<Settings>())
        )
    );
}

#[derive(KeyPart)]
struct Filter {
    chronicle: i64,
    clan: Option<String>,
    #[key_part(skip)]
    _trace_id: u64,
}

#[derive(KeyPart)]
struct CharacterId(i64);

#[derive(KeyPart)]
enum Sort {
    Name,
    Since(i32),
    Between { from: i32, to: i32 },
}

#[cache_function(key_prefix = "gen_search")]
fn search(filter: Filter, sort: Sort) -> String {
    ran(&SEARCH);
    format!("{}:{:?}", filter.chronicle, filter.clan)
}

#[test]
fn derived_key_parts_are_distinct_and_escaped() {
    let f = |chronicle, clan: Option<&str>| Filter {
        chronicle,
        clan: clan.map(str::to_owned),
        _trace_id: rand::random(),
    };
    let keys = [
        search_cache_key(&f(3, None), &Sort::Name),
        search_cache_key(&f(3, Some("")), &Sort::Name),
        search_cache_key(&f(3, Some("~")), &Sort::Name),
        search_cache_key(&f(3, Some("a,b")), &Sort::Name),
        search_cache_key(&f(3, Some("a")), &Sort::Since(2024)),
        search_cache_key(&f(3, Some("a")), &Sort::Between { from: 1, to: 2 }),
        search_cache_key(&f(30, Some("a")), &Sort::Name),
    ];
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
        assert!(!a.contains(['*', '?', '[', ']', ' ']), "{a}");
    }
    assert_eq!(
        search_cache_key(&f(3, Some("a*b")), &Sort::Between { from: 1, to: 2 }),
        "tg:fn:gen_search:filter=(3,a%2Ab):sort=Between(1,2)"
    );
    // A skipped field does not change the key.
    assert_eq!(
        search_cache_key(&f(3, None), &Sort::Name),
        search_cache_key(&f(3, None), &Sort::Name)
    );
    assert_eq!(CharacterId(5).to_key_part(), 5.to_key_part());
    assert_eq!(search(f(1, None), Sort::Name), "1:None");
    assert_eq!(search(f(1, None), Sort::Name), "1:None");
    assert_eq!(SEARCH.load(SeqCst), 1);
}
