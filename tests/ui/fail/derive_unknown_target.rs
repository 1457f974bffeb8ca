use tg_cache::Invalidate;

#[derive(Invalidate)]
#[invalidate(view = "home")]
struct Character {
    id: i64,
}

fn main() {}
