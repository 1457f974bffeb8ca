#[derive(tg_cache::KeyPart)]
union Bits {
    a: u32,
    b: f32,
}

fn main() {}
