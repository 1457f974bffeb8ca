use tg_cache::cache_function;

struct View {
    chronicle_id: i64,
}

impl View {
    #[cache_function(key_prefix = "page", key = "{self.chronicle}:{page}")]
    fn page(&self, page: u32) -> String {
        format!("{}{page}", self.chronicle_id)
    }
}

fn main() {}
