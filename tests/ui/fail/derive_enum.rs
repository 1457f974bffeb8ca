use tg_cache::Invalidate;

#[derive(Invalidate)]
enum Character {
    Vampire { id: i64 },
}

fn main() {}
