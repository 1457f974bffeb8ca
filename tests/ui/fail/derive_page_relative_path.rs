use tg_cache::Invalidate;

#[derive(Invalidate)]
#[invalidate(page(view = "posts", path = "posts/{slug}"))]
struct Post {
    slug: String,
}

fn main() {}
