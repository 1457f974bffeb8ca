use tg_cache::cache_function;

trait Table {
    const NAME: &'static str;
}

struct Repo<T>(std::marker::PhantomData<T>);

impl<T: Table + Send + Sync + 'static> Repo<T> {
    // The impl's `T` only in a skipped parameter: the result still varies
    // with it, so every `Repo<T>` would share one entry. A compile error
    // on the `T`, unless `self_type = true`.
    #[cache_function(key_prefix = "repo_name", skip(marker))]
    fn name(marker: std::marker::PhantomData<T>) -> String {
        let _ = marker;
        T::NAME.to_owned()
    }
}

fn main() {}
