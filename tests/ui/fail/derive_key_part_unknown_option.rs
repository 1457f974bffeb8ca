#[derive(tg_cache::KeyPart)]
struct Filter {
    #[key_part(rename = "c")]
    chronicle: i64,
}

fn main() {}
