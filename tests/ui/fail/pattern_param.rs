use tg_cache::cache_function;

#[cache_function(key_prefix = "sum")]
fn sum((a, b): (i64, i64)) -> i64 {
    a + b
}

fn main() {}
