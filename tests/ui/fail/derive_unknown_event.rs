use tg_cache::Invalidate;

#[derive(Invalidate)]
#[invalidate_on(save, update)]
struct Character {
    id: i64,
}

fn main() {}
