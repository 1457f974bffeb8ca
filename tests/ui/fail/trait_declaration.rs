use tg_cache::cache_function;

trait Scenes {
    #[cache_function(key_prefix = "scenes")]
    fn scenes(&self, character_id: i64) -> Vec<String>;
}

fn main() {}
