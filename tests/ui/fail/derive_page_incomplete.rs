use tg_cache::Invalidate;

#[derive(Invalidate)]
#[invalidate(page(view = "posts"))]
struct Post {
    slug: String,
}

fn main() {}
