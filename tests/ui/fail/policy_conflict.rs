use tg_cache::cache_function;

#[cache_function(key_prefix = "conflict", result = true, always = true)]
fn conflict(id: u32) -> Result<u32, String> {
    Ok(id)
}

#[cache_function(key_prefix = "twice", option = true, option = true)]
fn twice(id: u32) -> Option<u32> {
    Some(id)
}

#[cache_function(key_prefix = "with_none", option = true, cache_none = true)]
fn with_none(id: u32) -> Option<u32> {
    Some(id)
}

#[cache_function(key_prefix = "falsy", always = false)]
fn falsy(id: u32) -> u32 {
    id
}

fn main() {}
