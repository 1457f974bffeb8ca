use tg_cache::Invalidate;

#[derive(Invalidate)]
#[invalidate(page(view = "posts", path = "/posts/{slug}", host = "example.org"))]
struct Post {
    slug: String,
}

fn main() {}
