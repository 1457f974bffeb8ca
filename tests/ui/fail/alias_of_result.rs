use tg_cache::cache_function;

type ApiResult<T> = Result<T, String>;
type MaybeName = Option<String>;

#[cache_function(key_prefix = "alias_result")]
fn alias_result(id: u32) -> ApiResult<u32> {
    Ok(id)
}

#[cache_function(key_prefix = "alias_option")]
fn alias_option(id: u32) -> MaybeName {
    Some(id.to_string())
}

fn main() {}
