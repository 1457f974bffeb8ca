use tg_cache::Invalidate;

#[derive(Invalidate)]
#[invalidate(key = "tg:view:character:{pk}")]
struct Character {
    id: i64,
}

fn main() {}
