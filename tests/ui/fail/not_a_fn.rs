use tg_cache::cache_function;

#[cache_function(key_prefix = "character")]
struct Character {
    id: i64,
}

fn main() {}
