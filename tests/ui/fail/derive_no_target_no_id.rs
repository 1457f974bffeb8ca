use tg_cache::Invalidate;

#[derive(Invalidate)]
struct Character {
    pk: i64,
}

fn main() {}
