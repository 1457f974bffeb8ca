use tg_cache::Invalidate;

#[derive(Invalidate)]
#[invalidate(key = "tg:view:character:{id}-{chronicle_id}")]
#[invalidate(pattern = "tg:view:search:{chronicle_id}{id}:*")]
pub struct Character {
    pub id: i64,
    pub chronicle_id: i64,
}

fn main() {}
