use tg_cache::cache_function;

pub struct View {
    pub id: i64,
}

impl View {
    #[cache_function(key_prefix = "page", key = "{self.id}:{page}", skip(self))]
    pub fn page(&self, page: u32) -> String {
        format!("{}{page}", self.id)
    }
}

#[cache_function(key_prefix = "free", skip(self))]
fn free(page: u32) -> u32 {
    page
}

fn main() {}
