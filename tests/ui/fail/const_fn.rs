use tg_cache::cache_function;

#[cache_function(key_prefix = "square")]
const fn square(x: i64) -> i64 {
    x * x
}

fn main() {}
