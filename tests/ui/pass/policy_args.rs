//! Explicit policies on aliased return types compile.
use tg_cache::cache_function;

type ApiResult<T> = Result<T, String>;
type MaybeName = Option<String>;
type Plain = Vec<u32>;

#[cache_function(key_prefix = "p_result", result = true)]
fn ok_only(id: u32) -> ApiResult<u32> {
    Ok(id)
}

#[cache_function(key_prefix = "p_always", always = true)]
fn errors_too(id: u32) -> ApiResult<u32> {
    Err(id.to_string())
}

#[cache_function(key_prefix = "p_option", option = true)]
fn some_only(id: u32) -> MaybeName {
    Some(id.to_string())
}

#[cache_function(key_prefix = "p_plain")]
fn plain(id: u32) -> Plain {
    vec![id]
}

#[cache_function(key_prefix = "p_io")]
fn io(id: u32) -> std::io::Result<u32> {
    Ok(id)
}

/// An error that is not `Clone`: the single-flight cannot share it.
pub struct NotClone(pub u32);

#[cache_function(key_prefix = "p_not_clone")]
async fn not_clone_error(id: u32) -> Result<u32, NotClone> {
    if id == 0 { Err(NotClone(id)) } else { Ok(id) }
}

pub struct View {
    pub id: i64,
}

impl View {
    #[cache_function(key_prefix = "p_skip_self", skip(self))]
    pub async fn same_for_all(&self, page: u32) -> u32 {
        page
    }

    #[cache_function(key_prefix = "p_boxed", key = "{self.id}")]
    pub fn boxed(self: Box<Self>) -> i64 {
        self.id
    }
}

fn main() {
    let _ = (ok_only(1), errors_too(1), some_only(1), plain(1), io(1));
    let _ = View { id: 1 }.same_for_all(1);
    let _ = not_clone_error(1);
    let _ = Box::new(View { id: 1 }).boxed();
}
