use tg_cache::Invalidate;

// A placeholder in the path of a page pattern is written as a key value
// (`'2024-recap`), never as the URL path the page is keyed on.
#[derive(Invalidate)]
#[invalidate(pattern = "tg:view:posts:path=/posts/{slug}:*")]
struct Post {
    slug: String,
}

fn main() {}
