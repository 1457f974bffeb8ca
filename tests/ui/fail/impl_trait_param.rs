use tg_cache::cache_function;

#[cache_function(key_prefix = "show")]
fn show(value: impl std::fmt::Display) -> String {
    value.to_string()
}

fn main() {}
