use tg_cache::cache_function;

#[cache_function(key_prefix = "show")]
fn show<T: std::fmt::Display + tg_cache::KeyPart>(value: T) -> String {
    value.to_string()
}

fn main() {}
