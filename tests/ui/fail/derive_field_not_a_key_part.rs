use tg_cache::Invalidate;

struct Owner;

#[derive(Invalidate)]
#[invalidate(model_key(owner))]
struct Character {
    id: i64,
    owner: Owner,
}

fn main() {}
