use tg_cache::Invalidate;

#[derive(Invalidate)]
#[invalidate_on(save, delete, save)]
struct Character {
    id: i64,
}

fn main() {}
