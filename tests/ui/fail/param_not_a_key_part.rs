use tg_cache::cache_function;

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Filter {
    chronicle: i64,
}

// One error, on the parameter's type, naming `#[derive(KeyPart)]`.
#[cache_function(key_prefix = "by_filter")]
fn by_filter(filter: Filter) -> Vec<i64> {
    vec![filter.chronicle]
}

fn main() {}
