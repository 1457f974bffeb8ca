use tg_cache::cache_function;

trait Table {
    const NAME: &'static str;
}

struct Repo<T>(std::marker::PhantomData<T>);

impl<T: Table + Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static> Repo<T> {
    // The attribute cannot see the impl's `T`: every `Repo<T>` would share
    // one entry. A compile error on the `T`, unless `self_type = true`.
    #[cache_function(key_prefix = "repo_all")]
    fn all() -> Vec<T> {
        Vec::new()
    }
}

fn main() {}
