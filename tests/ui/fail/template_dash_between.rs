use tg_cache::cache_function;

#[cache_function(key_prefix = "dash", key = "{a}-{b}")]
fn dash(a: String, b: String) -> String {
    a + &b
}

fn main() {}
