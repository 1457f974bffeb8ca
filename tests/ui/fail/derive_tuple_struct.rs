use tg_cache::Invalidate;

#[derive(Invalidate)]
struct Character(i64);

fn main() {}
