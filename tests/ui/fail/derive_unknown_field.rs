use tg_cache::Invalidate;

#[derive(Invalidate)]
#[invalidate(model_key(id), model_key(chronicle = chronicle))]
struct Character {
    id: i64,
    chronicle_id: i64,
}

fn main() {}
