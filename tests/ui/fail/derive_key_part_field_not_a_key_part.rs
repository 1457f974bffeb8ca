struct Opaque;

#[derive(tg_cache::KeyPart)]
struct Filter {
    chronicle: i64,
    extra: Opaque,
}

fn main() {}
