use tg_cache::cache_function;

#[cache_function(key_prefix = "name")]
fn name(name: &str) -> &str {
    name
}

fn main() {}
