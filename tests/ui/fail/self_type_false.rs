use tg_cache::cache_function;

#[cache_function(key_prefix = "x", self_type = false)]
fn x() -> u8 {
    1
}

fn main() {}
