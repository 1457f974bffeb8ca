//! Pieces shared by the macros: error collection and key templates.

use proc_macro2::Span;

/// Collects errors so that all of them are reported at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, span: Span, msg: impl std::fmt::Display) {
        let e = syn::Error::new(span, msg);
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// A piece of a `"text{placeholder}text"` key template.
pub(crate) enum Token<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// Splits a key template into literal text and `{placeholder}` names.
pub(crate) fn split_template(template: &str) -> Result<Vec<Token<'_>>, &'static str> {
    if template.is_empty() {
        return Err("the template is empty");
    }
    let mut out = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        if let Some(stripped) = rest.strip_prefix('{') {
            let end = stripped.find('}').ok_or("unclosed `{` in the template")?;
            out.push(Token::Placeholder(stripped[..end].trim()));
            rest = &stripped[end + 1..];
        } else {
            let end = rest.find('{').unwrap_or(rest.len());
            out.push(Token::Text(&rest[..end]));
            rest = &rest[end..];
        }
    }
    Ok(out)
}

/// Characters allowed in the literal text of a key template.
pub(crate) fn key_text_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '=' | '/' | '@' | '+')
}

/// The message for a character [`key_text_char`] refuses.
pub(crate) fn bad_key_char(c: char) -> String {
    format!(
        "{c:?} is not allowed in the literal text of a key template (letters, digits and `_ - . : = / @ +` are)"
    )
}

/// Whether `c` separates two placeholders: a character allowed in key text
/// that no [`KeyPart`](https://docs.rs/tg-cache) rendering ever contains
/// (strings keep only `A-Za-z0-9_-./@+` raw and escape the rest as `%XX`;
/// numbers, floats and bools use digits, letters, `-`, `.` and `+`; `'`
/// marks ambiguous strings, `~` is `None`, `!` a nested `Some`, and
/// sequences use `(`, `,`, `)`). Of the characters templates allow, that
/// leaves `:` and `=`.
pub(crate) fn separator_char(c: char) -> bool {
    matches!(c, ':' | '=')
}

/// Checks that no two values of a key template can be told apart only by
/// guessing where one ends: the literal text between two consecutive
/// placeholders must contain a [`separator_char`]; two placeholders that
/// touch are refused too. Returns one message per offending pair.
///
/// Why this is enough: the text before the first placeholder is fixed, so
/// the first value starts at a fixed offset. A value never contains a
/// separator, so the first separator after the start of a value is the first
/// separator of the literal that follows it, at a fixed offset into that
/// literal; that fixes where the value ends, hence where the next value
/// starts, and so on. Each value's text is then fixed by the key, and
/// [`KeyPart`](https://docs.rs/tg-cache) renderings are injective, so two
/// keys are equal only when every value is. The text after the last
/// placeholder is fixed and needs no rule.
pub(crate) fn check_separators(tokens: &[Token<'_>], what: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut prev: Option<&str> = None;
    let mut between = String::new();
    for token in tokens {
        match token {
            Token::Text(t) => between.push_str(t),
            Token::Placeholder(name) => {
                if let Some(p) = prev
                    && !between.chars().any(separator_char)
                {
                    let how = if between.is_empty() {
                        "touch".to_owned()
                    } else {
                        format!("are separated only by {between:?}, which a value can also contain")
                    };
                    out.push(format!(
                        "`{{{p}}}` and `{{{name}}}` in the {what} {how}, so two different calls could share a key; put a `:` between them, e.g. \"{{{p}}}:{{{name}}}\""
                    ));
                }
                prev = Some(name);
                between.clear();
            }
        }
    }
    out
}
