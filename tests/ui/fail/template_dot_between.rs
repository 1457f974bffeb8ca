use tg_cache::cache_function;

pub struct View {
    pub id: i64,
}

impl View {
    #[cache_function(key_prefix = "dot", key = "x:{self.id}.{page}")]
    pub fn dot(&self, page: u32) -> String {
        format!("{}{page}", self.id)
    }
}

fn main() {}
