use tg_cache::cache_function;

#[cache_function(key_prefix = "adjacent", key = "{a}{b}")]
fn adjacent(a: u32, b: u32) -> u32 {
    a + b
}

fn main() {}
