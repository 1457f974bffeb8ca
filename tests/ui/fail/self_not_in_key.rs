use std::sync::Arc;
use tg_cache::cache_function;

pub struct View {
    pub id: i64,
}

impl View {
    #[cache_function(key_prefix = "by_ref")]
    pub fn by_ref(&self, page: u32) -> String {
        format!("{}{page}", self.id)
    }

    #[cache_function(key_prefix = "by_mut")]
    pub async fn by_mut(&mut self, page: u32) -> String {
        format!("{}{page}", self.id)
    }

    #[cache_function(key_prefix = "by_value", key = "{page}")]
    pub fn by_value(self, page: u32) -> String {
        format!("{}{page}", self.id)
    }

    #[cache_function(key_prefix = "by_arc")]
    pub fn by_arc(self: Arc<Self>) -> String {
        self.id.to_string()
    }
}

fn main() {}
