use tg_cache::cache_function;

#[cache_function(key_prefix = "not_result", result = true)]
fn not_result(id: u32) -> u32 {
    id
}

#[cache_function(key_prefix = "not_option", option = true)]
fn not_option(id: u32) -> Vec<u32> {
    vec![id]
}

fn main() {}
